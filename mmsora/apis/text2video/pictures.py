"""Picture backends: one picture (or short clip) per shot.

``titlecard`` (the offline default) draws the shot's text on a procedural background;
``mmsora:RUN`` samples an mmsora model (DiT / VideoDiT, class-conditional: shots cycle
through ``labels``); ``diffusers:DIR`` runs a diffusers pipeline saved in a local
folder; ``openai`` calls the OpenAI images API when ``OPENAI_API_KEY`` is set.
Pictures are uint8 RGB arrays ``(H, W, 3)``; clips are ``(T, H, W, 3)``.
"""
import base64
import hashlib
import inspect
import io
import os
import os.path as osp
import tempfile
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from mmsora.utils.checkpoint import local_pretrained_kwargs
from mmsora.utils.cli import UserError
from .registry import PICTURE_BACKENDS
from .text_layout import check_font, draw_lines, find_font, wrap_lines

__all__ = ['PictureBackend', 'TitleCardPictures', 'MMSoraPictures', 'DiffusersPictures',
           'OpenAIPictures', 'build_pictures', 'PICTURE_SHORT_NAMES']

OFFLINE_HINT = ('offline pictures: --pictures titlecard (the default), mmsora:RUN or '
                'diffusers:DIR')


def _default_device():
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'


class PictureBackend:
    """Base class: ``iter_pictures(shots, size)`` hands over one array per shot, in
    order, each made when it is asked for; ``render_all`` returns them all at once."""

    def render(self, shot, size: Tuple[int, int]) -> np.ndarray:
        """One picture ``(H, W, 3)`` or clip ``(T, H, W, 3)`` (uint8) for ``shot``;
        ``size`` (W, H) is a hint: backends with a native resolution keep theirs."""
        raise NotImplementedError

    def iter_pictures(self, shots: Sequence, size: Tuple[int, int],
                      progress: bool = True) -> Iterator[np.ndarray]:
        """Shot by shot: the next picture is made when the previous one has been taken
        (the composer takes each when the video reaches its shot), so only those in
        use are held, not one per shot of the text."""
        # closed by the with block: an error ends the bar's line before it is printed
        # (it came out after the half-drawn bar, on its line); so does closing the
        # generator early
        with tqdm(total=len(shots), desc='pictures', disable=not progress) as bar:
            for shot in shots:
                picture = self.render(shot, size)
                bar.update()
                yield picture

    def render_all(self, shots: Sequence, size: Tuple[int, int],
                   progress: bool = True) -> List[np.ndarray]:
        """Every shot's picture, all held at once (:meth:`iter_pictures` as a list)."""
        return list(self.iter_pictures(shots, size, progress))


# --------------------------------------------------------------------------- #
#                                 Title cards                                 #
# --------------------------------------------------------------------------- #
@PICTURE_BACKENDS.register_module()
class TitleCardPictures(PictureBackend):
    """The shot's text over a gradient with soft shapes, coloured from its text's hash.

    Args:
        font: Font file (default: found by :func:`find_font`).
        show_text: Draw the text on the card (off when subtitles say it already).
    """

    def __init__(self, font: Optional[str] = None, show_text: bool = True):
        check_font(font)
        self.font, self.show_text = font, show_text

    def render(self, shot, size):
        w, h = size
        digest = hashlib.sha256(shot.text.encode('utf-8')).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], 'little'))
        top, bottom = (_hsv_to_rgb(rng.random(), 0.55 + 0.3 * rng.random(), v)
                       for v in (0.55, 0.18))
        ramp = np.linspace(0, 1, h)[:, None, None]
        pic = (np.asarray(top) * (1 - ramp) + np.asarray(bottom) * ramp)
        image = Image.fromarray(np.broadcast_to(pic, (h, w, 3)).astype(np.uint8))
        shapes = Image.new('RGBA', (w, h))
        draw = ImageDraw.Draw(shapes)
        for _ in range(6):
            r = int(min(w, h) * (0.1 + 0.25 * rng.random()))
            x, y = int(w * rng.random()), int(h * rng.random())
            colour = tuple(int(c) for c in _hsv_to_rgb(rng.random(), 0.6, 0.9)) + (70,)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        shapes = shapes.filter(ImageFilter.GaussianBlur(min(w, h) / 40))
        image = Image.alpha_composite(image.convert('RGBA'), shapes).convert('RGB')
        if self.show_text:
            # The upper half, away from the edges that the pan/zoom crops; the bottom
            # band is left to the subtitles.
            font, lines = self._fit(shot.text, 0.7 * w, 0.5 * h)
            draw_lines(ImageDraw.Draw(image), lines, font, w / 2, 0.12 * h)
        return np.asarray(image)

    def _fit(self, text, width, height, max_lines=5):
        """The largest font (down to 10 px) that fits the text in the box; lines past
        ``max_lines`` are dropped, the last kept one ending in an ellipsis."""
        size = max(10, int(height / 4))
        while True:
            font = find_font(text, size, self.font)
            lines = wrap_lines(text, font, width)
            if (len(lines) <= max_lines and len(lines) * size * 1.25 <= height) or size == 10:
                break
            size = max(10, int(size * 0.9))
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = lines[-1].rstrip() + '…'
        return font, lines


def _hsv_to_rgb(hue, saturation, value):
    import colorsys
    return tuple(255 * c for c in colorsys.hsv_to_rgb(hue, saturation, value))


# --------------------------------------------------------------------------- #
#                                mmsora models                                #
# --------------------------------------------------------------------------- #
def _config_from_checkpoint(path: str, folder: str) -> str:
    """Write the config that mmengine stores in a checkpoint's ``meta.cfg`` to a file."""
    from mmsora.utils.checkpoint import load_checkpoint_file
    meta = load_checkpoint_file(path).get('meta') or {}
    if not isinstance(meta.get('cfg'), str):
        raise UserError(f'{path} holds no config (meta.cfg); give the run\'s work dir '
                        'or its config file: --pictures mmsora:WORK_DIR')
    config = osp.join(folder, 'config.py')
    with open(config, 'w') as f:
        f.write(meta['cfg'])
    return config


@PICTURE_BACKENDS.register_module()
class MMSoraPictures(PictureBackend):
    """Sample an mmsora model; video models give clips.

    Class-conditional models draw shot i with ``labels[i % len(labels)]`` (default:
    cycle through the classes). Text-conditioned models are sampled from the shot's
    prompt, encoded by the model's ``text_encoder``.

    Args:
        run: A work dir of tools/train.py, a config file (with ``checkpoint``), or an
            mmengine checkpoint (its config is read from ``meta.cfg``).
        checkpoint: Checkpoint for a config file.
        labels: Class ids to cycle through.
        sampler, num_steps, cfg_scale: Sampling settings (default: the config's
            ``sample_cfg``).
        seed: Shot i uses seed ``seed + i``.
        device: Defaults to CUDA when available.
        batch_size: Shots sampled at once.
        cfg_options: ``KEY=VALUE`` config overrides (e.g. the text encoder's folder:
            ``model.text_encoder.pretrained_path=checkpoints/t5-small``).
    """

    def __init__(self, run: str, checkpoint: Optional[str] = None,
                 labels: Optional[Sequence[int]] = None, sampler: Optional[str] = None,
                 num_steps: Optional[int] = None, cfg_scale: Optional[float] = None,
                 seed: int = 0, device: Optional[str] = None, batch_size: int = 8,
                 cfg_options: Sequence[str] = ()):
        from mmsora.apis.inference import init_model
        # (read as a work dir, it was 'should hold exactly one dumped config (*.py)')
        if osp.isfile(osp.join(run, 'model_index.json')):
            raise UserError(f'{run} holds a diffusers pipeline (model_index.json), not an '
                            f'mmsora run: --pictures diffusers:{run}')
        device = device or _default_device()
        with tempfile.TemporaryDirectory() as folder:
            if osp.isfile(run) and not run.endswith('.py'):
                if checkpoint:  # (it was dropped: RUN's own weights were sampled)
                    raise UserError(f'--checkpoint {checkpoint} beside --pictures '
                                    f'mmsora:{run}, itself a checkpoint (its weights are '
                                    'sampled): give one of them, or a config file or work '
                                    'dir as RUN with --checkpoint')
                run, checkpoint = _config_from_checkpoint(run, folder), run
            self.model, cfg = init_model(run, checkpoint, device=device,
                                         cfg_options=cfg_options,
                                         checkpoint_option='--checkpoint CKPT',
                                         trained_option=None)  # (no --no-ema here)
        # the choices given; sample_images puts them over the run's sample_cfg with its
        # sampler's options, at infer's default precision (unset: the objective's own
        # sampler and steps; a SiT model was refused 'ddpm')
        self.sample_kwargs = dict(sampler=sampler, num_steps=num_steps, cfg_scale=cfg_scale)
        from mmsora.apis.video import DEFAULT_FPS
        self.fps = cfg.get('sample_cfg', {}).get('fps', DEFAULT_FPS)
        num_classes = self.model.num_classes
        self.labels = list(labels) if labels else list(range(num_classes))
        if self.text_conditioned:
            if labels:
                raise UserError('--labels are for class-conditional models; this one is '
                                'text-conditioned and draws each shot from its prompt')
            if getattr(self.model, 'text_encoder', None) is None:
                raise UserError('this text-conditioned model has no model.text_encoder to '
                                'encode the prompts; set one with --cfg-options')
        from mmsora.apis.inference import check_label_ids
        check_label_ids(self.labels, num_classes)
        self.seed, self.batch_size = seed, batch_size

    @property
    def text_conditioned(self) -> bool:
        return getattr(self.model, 'text_conditioned', False)

    def match_aspect(self, size) -> Optional[Tuple[int, int]]:
        """Sample at the output's aspect ratio (``size``: W, H) where the model can: a
        convolutional denoiser (Stable Cascade) on a latent grid of about the area it
        was set up for (the pan/zoom cut its square clips to 16:9: 44% of each frame
        lost). A transformer's position table fixes its size: left as it is. Returns
        the frames' (W, H), or None where the size stays."""
        from mmsora.apis.inference import set_output_size
        if not hasattr(self, '_shape'):
            self._shape = self.model.latent_shape  # (what each call starts from)
        self.model.latent_shape = self._shape
        rows, cols = self._shape[-2:]
        aspect = size[0] / size[1]
        if abs(aspect - cols / rows) < 0.02:
            return None
        rows = max(1, round((rows * cols / aspect) ** 0.5))
        cols = max(1, round(rows * aspect))
        vae = self.model.vae
        f = vae.downsample_factor if vae is not None else 1
        # (int(): Stable Cascade's factor 42.67 rounds the side up to this grid again;
        # its decoded size, asked for, gives the same grid without a note on rounding)
        resolution = (int(rows * f), int(cols * f))
        if hasattr(vae, 'decoded_size'):
            resolution = tuple(vae.decoded_size(*resolution))
        try:
            set_output_size(self.model, resolution=resolution)
        except ValueError:  # a fixed position table
            self.model.latent_shape = self._shape
            return None
        return resolution[::-1]

    def iter_pictures(self, shots, size, progress=True):
        """A batch of ``batch_size`` shots sampled when the first of them is asked
        for, its pictures handed over one at a time (the samples of every shot, made
        up front and kept, grew with the text)."""
        from mmsora.apis.inference import sample_images
        self.match_aspect(size)
        n = len(shots)
        seeds = [self.seed + i for i in range(n)]
        if self.text_conditioned:
            labels, prompts = None, [shot.prompt for shot in shots]
        else:
            labels, prompts = [self.labels[i % len(self.labels)] for i in range(n)], None
        # One batch at a time under a 'pictures' bar over the shots, as the other
        # backends' (the sampling steps' bar had no label and counted steps); sample i
        # depends only on its label or prompt and its seed, not on its batch.
        with tqdm(total=n, desc='pictures', disable=not progress) as bar:
            for start in range(0, n, self.batch_size):
                part = slice(start, start + self.batch_size)
                pictures = self._pictures(sample_images(
                    self.model, None if labels is None else labels[part], seeds[part],
                    batch_size=self.batch_size,
                    prompts=None if prompts is None else prompts[part],
                    **self.sample_kwargs))
                bar.update(len(seeds[part]))
                yield from pictures
                del pictures  # (not held while the next batch is sampled)

    @staticmethod
    def _pictures(samples) -> List[np.ndarray]:
        """Samples in [-1, 1], ``(N, 3, H, W)`` or clips ``(N, 3, T, H, W)``, as uint8
        pictures ``(H, W, 3)`` or clips ``(T, H, W, 3)``."""
        if samples.dim() not in (4, 5) or samples.shape[1] != 3:
            raise UserError(f'the model samples shape {tuple(samples.shape)}, not RGB '
                            'pictures; latent models need a VAE (model.vae)')
        pics = ((samples.clamp(-1, 1) + 1) * 127.5).round().byte()
        if pics.dim() == 5:  # (N, 3, T, H, W) clips -> (N, T, H, W, 3)
            return list(pics.permute(0, 2, 3, 4, 1).numpy())
        return list(pics.permute(0, 2, 3, 1).numpy())


# --------------------------------------------------------------------------- #
#                             diffusers pipelines                             #
# --------------------------------------------------------------------------- #
# Pipelines that give no pictures from a saved folder: the prior samples Stage C
# latents (image embeddings); the decoder and the combined pipeline name Würstchen's
# PaellaVQModel, which diffusers no longer loads by name ("`diffusers` has no class
# PaellaVQModel").
STABLE_CASCADE_PIPELINES = ('StableCascadePriorPipeline', 'StableCascadeDecoderPipeline',
                            'StableCascadeCombinedPipeline')


def check_picture_pipeline(path: str) -> None:
    """Refuse, before loading it, a pipeline folder whose ``model_index.json`` names a
    Stable Cascade pipeline: the prior sampled, then stopped on its output (no
    ``images``); the decoder and combined ones failed inside diffusers."""
    from mmsora.utils.checkpoint import read_json_config
    name = (read_json_config(osp.join(path, 'model_index.json')) or {}).get('_class_name')
    if name in STABLE_CASCADE_PIPELINES:
        raise UserError(f'{path} holds a {name}, which gives no pictures here: sample a '
                        'Stable Cascade run of mmsora instead (--pictures mmsora:RUN, with '
                        'its Stage B + A as model.vae)')


def _mmsora_run_hint(path: str) -> str:
    """A hint toward ``mmsora:`` for a path that looks like an mmsora run (a config, a
    checkpoint, or a work dir of tools/train.py holding them), else ''."""
    suffixes = ('.py', '.pth', '.pt', '.ckpt')
    if osp.isdir(path):
        names = os.listdir(path)
        run = 'last_checkpoint' in names or any(name.endswith(suffixes) for name in names)
    else:
        run = osp.isfile(path) and path.endswith(suffixes)
    return f'; an mmsora run is sampled with --pictures mmsora:{path}' if run else ''


def _pipeline_class(path: str):
    """The diffusers pipeline class that ``model_index.json`` names, or None (not one
    of diffusers', or one whose dependencies are missing)."""
    import diffusers
    from mmsora.utils.checkpoint import read_json_config
    name = (read_json_config(osp.join(path, 'model_index.json')) or {}).get('_class_name')
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    ok = isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)
    return cls if ok else None


@PICTURE_BACKENDS.register_module()
class DiffusersPictures(PictureBackend):
    """A diffusers pipeline saved in a local folder (``save_pretrained`` layout).

    Text pipelines get the shot's prompt; class-conditional ones (DiTPipeline) cycle
    through ``labels``; unconditional ones just sample. Nothing is downloaded. An
    option the pipeline does not take is refused (it was dropped without a word).

    Args:
        path: The pipeline's folder.
        num_steps: Inference steps, for pipelines that take ``num_inference_steps``.
            Defaults to 30.
        guidance_scale: For pipelines that take it (default: the pipeline's).
        labels: Class ids to cycle through, for class-conditional pipelines (default:
            class 0).
        seed: Shot i uses seed ``seed + i``.
        device: Defaults to CUDA when available.
    """

    DEFAULT_STEPS = 30

    def __init__(self, path: str, num_steps: Optional[int] = None,
                 guidance_scale: Optional[float] = None,
                 labels: Optional[Sequence[int]] = None, seed: int = 0,
                 device: Optional[str] = None):
        if not osp.isdir(path):
            hint = _mmsora_run_hint(path) or (' (save one with pipeline.save_pretrained(DIR)); '
                                              + OFFLINE_HINT)
            raise UserError(f'--pictures diffusers:DIR: no pipeline folder {path!r}{hint}')
        if not osp.isfile(osp.join(path, 'model_index.json')):
            raise UserError(f'{path} is not a diffusers pipeline folder (no model_index.json)'
                            + _mmsora_run_hint(path))
        check_picture_pipeline(path)
        self.num_steps, self.guidance_scale = num_steps, guidance_scale
        self.labels, self.seed = list(labels) if labels else [0], seed
        known = _pipeline_class(path)
        if known is not None:  # refused before the pipeline loads
            self._check_options(known.__name__, inspect.signature(known.__call__).parameters,
                                labels)
        import torch
        from diffusers import DiffusionPipeline
        device = device or _default_device()
        dtype = torch.float16 if device.startswith('cuda') else torch.float32
        self.pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype,
                                                      **local_pretrained_kwargs()).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.params = inspect.signature(self.pipe.__call__).parameters
        self._check_options(type(self.pipe).__name__, self.params, labels)

    def _check_options(self, name: str, params, labels) -> None:
        """Refuse the options given that the pipeline ``name``'s ``__call__`` (its
        ``params``) does not take."""
        if labels and ('prompt' in params or 'class_labels' not in params):
            kind = 'it draws from the prompt' if 'prompt' in params else 'not class-conditional'
            raise UserError(f'--labels: {name} takes no class labels ({kind}); leave '
                            '--labels out')
        if self.guidance_scale is not None and 'guidance_scale' not in params:
            raise UserError(f'--cfg-scale: {name} takes no guidance_scale (it samples '
                            'without guidance); leave --cfg-scale out')
        if self.num_steps is not None and 'num_inference_steps' not in params:
            raise UserError(f'--steps: {name} takes no num_inference_steps; leave --steps '
                            'out')

    def render(self, shot, size):
        import torch
        kwargs = dict(output_type='np')
        if 'num_inference_steps' in self.params:
            kwargs['num_inference_steps'] = (self.DEFAULT_STEPS if self.num_steps is None
                                            else self.num_steps)
        if 'generator' in self.params:
            kwargs['generator'] = torch.Generator().manual_seed(self.seed + shot.index)
        if 'prompt' in self.params:
            kwargs['prompt'] = shot.prompt
        elif 'class_labels' in self.params:
            kwargs['class_labels'] = [self.labels[shot.index % len(self.labels)]]
        if self.guidance_scale is not None and 'guidance_scale' in self.params:
            kwargs['guidance_scale'] = self.guidance_scale
        out = self.pipe(**kwargs)
        pics = getattr(out, 'frames', None)
        if pics is None:
            pics = getattr(out, 'images', None)
        if pics is None:  # e.g. a prior's image embeddings: an AttributeError before
            raise UserError(f'{type(self.pipe).__name__} gives a {type(out).__name__} with '
                            'neither images nor frames: not a picture pipeline; give a '
                            'text-to-image or text-to-video pipeline folder')
        pics = np.asarray(pics)[0]  # (H, W, 3) or clip
        return (np.clip(pics, 0, 1) * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- #
#                                 OpenAI images                               #
# --------------------------------------------------------------------------- #
@PICTURE_BACKENDS.register_module()
class OpenAIPictures(PictureBackend):
    """The OpenAI images API (``pip install openai``, ``OPENAI_API_KEY`` set).

    Args:
        model: Image model. Defaults to ``'dall-e-3'``.
        size: Requested size (default: the model's widest landscape size).
    """

    SIZES = {'dall-e-3': '1792x1024', 'dall-e-2': '1024x1024'}

    def __init__(self, model: str = 'dall-e-3', size: Optional[str] = None):
        if not os.environ.get('OPENAI_API_KEY'):
            raise UserError('--pictures openai needs OPENAI_API_KEY in the environment; '
                            + OFFLINE_HINT)
        try:
            import openai
        except ImportError:
            raise UserError('--pictures openai needs the openai package (pip install '
                            'openai); ' + OFFLINE_HINT) from None
        self.client, self.model = openai.OpenAI(), model
        self.size = size or self.SIZES.get(model, '1536x1024')

    def render(self, shot, size):
        kwargs = dict(model=self.model, prompt=shot.prompt, size=self.size, n=1)
        if self.model.startswith('dall-e'):  # gpt-image models always answer base64
            kwargs['response_format'] = 'b64_json'
        data = self.client.images.generate(**kwargs).data[0]
        if data.b64_json:
            raw = base64.b64decode(data.b64_json)
        else:
            import urllib.request
            with urllib.request.urlopen(data.url, timeout=120) as response:
                raw = response.read()
        return np.asarray(Image.open(io.BytesIO(raw)).convert('RGB'))


# NAME -> (registered type, argument that ``NAME:ARG`` fills, whether ARG is required).
PICTURE_SHORT_NAMES = {
    'titlecard': ('TitleCardPictures', None, False),
    'mmsora': ('MMSoraPictures', 'run', True),
    'diffusers': ('DiffusersPictures', 'path', True),
    'openai': ('OpenAIPictures', 'model', False),
}


def build_pictures(spec='titlecard', **kwargs):
    """A picture backend from ``titlecard``, ``mmsora:RUN``, ``diffusers:DIR``,
    ``openai[:MODEL]`` or a config dict; ``kwargs`` go to its constructor."""
    from .registry import build_backend
    return build_backend(PICTURE_BACKENDS, spec, PICTURE_SHORT_NAMES, '--pictures', **kwargs)

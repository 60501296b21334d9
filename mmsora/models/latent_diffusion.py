"""LatentDiffusion: a denoiser, a diffusion objective and an optional VAE, trained
and sampled through mmengine (after DiT's ``train.py`` and ``sample.py``,
Peebles & Xie 2023).
"""
import contextlib
import inspect
import math
import numbers
from collections import OrderedDict
from collections.abc import Iterable, KeysView, Set
from typing import Dict, Optional, Sequence, Union

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseModel

from mmsora.registry import DIFFUSION, MODELS
from mmsora.utils import sample_rng
from mmsora.utils.labels import check_label_range
from .layers import set_attention_backend

__all__ = ['LatentDiffusion']

# What ``pretrained_entry`` may name: a guess (a training file's 'ema'), or an entry of
# a DiT / fast-DiT / SiT training file.
PRETRAINED_ENTRIES = ('auto', 'model', 'ema')


@MODELS.register_module()
class LatentDiffusion(BaseModel):
    """Latent diffusion model: ``loss`` for training, ``sample`` for generation.

    Args:
        denoiser: Config of the denoiser (e.g. ``dict(type='DiT', ...)``); it is
            called as ``denoiser(x, t, y)`` and, for guidance,
            ``denoiser.forward_with_cfg(x, t, y, cfg_scale)``.
        diffusion: Config of the objective in the ``DIFFUSION`` registry
            (``GaussianDiffusion``, ``Transport``, ...). The model calls only its
            ``loss(denoiser, x0, model_kwargs)`` and ``sample(model_fn, noise,
            model_kwargs, sampler, num_steps, generators, progress, **options)``.
        vae: Optional config of a VAE wrapper (``encode``/``decode`` and a
            ``scale_factor``). With one, a batch's ``images`` are encoded to latents.
            Without one the model diffuses in pixel space: a batch's ``images``
            (in [-1, 1]) *are* its latents, and samples are returned as they are.
        latent_shape: Shape of one latent, ``(C, H, W)`` (or ``(C, T, H, W)``);
            used by :meth:`sample` when no noise is given.
        text_encoder: Optional config of a frozen text encoder (``HFTextEncoder``)
            for a text-conditioned denoiser (``denoiser.condition == 'text'``): it
            encodes ``prompts`` at sampling time, and batch captions when a batch
            carries no pre-extracted ``text_embeds``. Kept out of the state dict.
        num_classes: Number of classes; the null (unconditional) label is
            ``num_classes``, as in DiT. ``num_classes=1`` is an unconditional model:
            its batches may come without labels (video datasets give label -1 to
            rows without one), and label -1 is read as class 0.
        pretrained_denoiser: Optional original DiT / fast-DiT checkpoint file loaded
            into the denoiser (``strict=True``) by ``init_weights``, i.e. when a run
            starts; ``tools/train.py --load-from`` sets it for such files. A denoiser
            with a ``load_image_dit`` method (VideoDiT) inflates an image DiT's
            weights, and loads a video model's own (an mmsora run's checkpoint or a
            converted DeepSpeed one, which have ``temp_embed``) as they are.
        pretrained_entry: Which weights of a DiT / fast-DiT / SiT training file
            (``{'model', 'ema', 'opt', 'args'}``) ``pretrained_denoiser`` gives the
            denoiser: ``'auto'`` (default) its ``'ema'`` weights (the ones those papers
            sample with; any other file as it is), ``'model'`` its trained weights, to
            continue its training: mmsora's ``EMAHook`` then starts its average from
            the file's ``'ema'`` weights (:meth:`load_pretrained_denoiser`), as the
            train.py that saved it would have gone on. ``'ema'`` names that entry.
            Any other file loads as it is, whatever the entry.
            ``tools/train.py --load-from`` of a training file sets ``'model'`` where
            the run keeps such an EMA or none.
        train_noise_seed: None (default): a training step draws its timesteps, noise
            and label / caption drops from torch's global generator, per process (as
            DiT). An int: each sample draws them from its own generator seeded by
            ``(train_noise_seed, optimizer step, place in the global batch)``
            (:mod:`mmsora.utils.sample_rng`), so the same global batch gives the
            same per-sample losses and gradients on any number of processes and
            with any gradient accumulation, and a resumed run needs no RNG state for
            them. The step is the Runner's iteration (mmengine's message hub) over
            the micro-batches per step (``accumulative_counts`` in the hub, which
            ``ResumeCheckHook`` publishes; 1 without it); without a Runner, the count
            of ``loss`` calls. The place of local sample ``i`` of micro-batch ``m``
            (of ``n`` samples) on rank ``r`` of ``W`` is ``(m * n + i) * W + r``:
            mmengine's ``DefaultSampler`` and ``InfiniteSampler`` hand out the global
            order that way. Costs one small CPU generator per sample per step. Not
            covered: dropout layers (0 in our denoisers) and random augmentation
            inside datasets (drawn per loader worker).
        init_seed: None (default): the submodules draw their initial weights from
            torch's global generator, wherever it stands when the model is built. An
            int: from torch's CPU generator seeded with it (see :func:`_seeded` for
            the generator's state afterwards; initialisation in ``init_weights``, e.g.
            by ``init_cfg``, is not covered), so the initial weights do not depend on
            when the runner builds the model
            (mmengine's ``Runner`` builds it right after seeding, its
            ``FlexibleRunner`` for DeepSpeed / FSDP later) nor on the process: every
            process of an FSDP or DeepSpeed run starts from the same whole model, the
            one a single-process run of the same config starts from.
            ``tools/train.py`` sets it to ``randomness.seed`` when that is set and
            ``model.init_seed`` is not given.
        attn_backend: Attention kernel of the denoiser's attention layers:
            ``'auto'`` (flash-attn or xformers where installed and suitable, else
            PyTorch SDPA), ``'sdpa'``, ``'flash_attn'`` or ``'xformers'``
            (:mod:`mmsora.models.layers.attention_backends`).
        data_preprocessor: mmengine data preprocessor config.
        init_cfg: mmengine init config.
    """

    def __init__(self,
                 denoiser: dict,
                 diffusion: dict = dict(type='GaussianDiffusion'),
                 vae: Optional[dict] = None,
                 text_encoder: Optional[dict] = None,
                 latent_shape: Sequence[int] = (4, 32, 32),
                 num_classes: int = 1000,
                 pretrained_denoiser: Optional[str] = None,
                 pretrained_entry: str = 'auto',
                 train_noise_seed: Optional[int] = None,
                 init_seed: Optional[int] = None,
                 attn_backend: str = 'auto',
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        for name, value in (('train_noise_seed', train_noise_seed), ('init_seed', init_seed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f'model.{name} must be an int (or None), got {value!r}')
        if pretrained_entry not in PRETRAINED_ENTRIES:
            raise ValueError(f'model.pretrained_entry must be one of '
                             f'{", ".join(map(repr, PRETRAINED_ENTRIES))}, got '
                             f'{pretrained_entry!r}')
        for name, part in (('denoiser', denoiser), ('diffusion', diffusion)):
            if not isinstance(part, dict):  # (mmengine's TypeError, a traceback)
                raise ValueError(f'model.{name} must be a config dict(type=...), got '
                                 f'{part!r}')
        with _seeded(init_seed):
            self.denoiser = set_attention_backend(MODELS.build(denoiser), attn_backend)
            self.diffusion = DIFFUSION.build(diffusion)
            self.vae = MODELS.build(vae) if vae is not None else None
            self.text_encoder = (MODELS.build(text_encoder) if text_encoder is not None
                                 else None)
        self.latent_shape = tuple(latent_shape)
        self.num_classes = num_classes
        self._check_parts_agree()
        self._check_denoiser_signature('forward')  # (forward_with_cfg: when guided)
        self.pretrained_denoiser = pretrained_denoiser
        self.pretrained_entry = pretrained_entry
        self.train_noise_seed = train_noise_seed
        self._calls_without_runner = 0

    def _check_denoiser_signature(self, method: str):
        """Refuse a denoiser whose ``method`` (``forward`` when built;
        ``forward_with_cfg`` before guided sampling: a config that only trains need not
        have it right) does not take the keywords this model calls it with: ``y``
        (labels, or a text denoiser's tokens with ``mask``, and ``pooled`` where it has
        a ``pooled_dim``). A diffusers-style ``forward(hidden_states, timestep,
        class_labels)`` failed at the first step with "got an unexpected keyword
        argument 'y'"."""
        names = ['y']
        if self.text_conditioned:
            names += ['mask'] + (['pooled'] if getattr(self.denoiser, 'pooled_dim', None)
                                 else [])
        wanted = names + ['cfg_scale'] if method == 'forward_with_cfg' else names
        fn = getattr(self.denoiser, method, None)
        if fn is None or getattr(type(self.denoiser), method, None) is \
                torch.nn.Module.forward:  # (none of its own: it says so when called)
            return
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # (a builtin or C-implemented callable)
            return
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return
        taken = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        missing = [name for name in wanted if name not in taken]
        if missing:
            call = ', '.join(['x', 't'] + [f'{n}=...' for n in wanted])
            found = ', '.join(p.name for p in params)
            raise ValueError(
                f'model.denoiser: {type(self.denoiser).__name__}.{method}({found}) '
                f'does not take the keyword{"s" * (len(missing) > 1)} '
                f'{", ".join(missing)}: LatentDiffusion calls it as {method}({call}); '
                'name its parameters so (or take **kwargs)')

    def _denoiser_classes(self):
        """The denoiser's number of classes (its label table's), or None."""
        classes = getattr(getattr(self.denoiser, 'y_embedder', None), 'num_classes', None)
        if classes is None and isinstance(getattr(self.denoiser, 'num_classes', None), int):
            classes = self.denoiser.num_classes  # a denoiser of one's own saying it
        return classes

    def _check_parts_agree(self):
        """Refuse settings the denoiser and the rest state twice and differently (they
        failed later: an index error at sampling, an assertion in the loss)."""
        classes = self._denoiser_classes()
        if classes is not None and classes != self.num_classes:
            raise ValueError(f'model.num_classes={self.num_classes} but model.denoiser.'
                             f'num_classes={classes}: set both (label num_classes is the '
                             'null class of guidance)')
        channels = getattr(self.denoiser, 'in_channels', None)
        if channels is not None and channels != self.latent_shape[0]:
            raise ValueError(f'model.latent_shape {list(self.latent_shape)} has '
                             f'{self.latent_shape[0]} channels but model.denoiser.in_channels '
                             f'is {channels}: set both to the latents\' channels (SD VAE: 4)')
        # Transformers have a position table for one token grid, and VideoDiT one for
        # at most num_frames frames: other latents failed in the first forward.
        grid = getattr(getattr(self.denoiser, 'x_embedder', None), 'img_size', None)
        if grid is not None and tuple(self.latent_shape[-2:]) != tuple(grid):
            size = 'x'.join(map(str, self.latent_shape[-2:]))
            raise ValueError(f'model.latent_shape {list(self.latent_shape)} is {size} but '
                             f'model.denoiser.input_size is {"x".join(map(str, grid))}: set '
                             'both to the latents\' size (the pixels / the VAE factor: '
                             '256 px / 8 = 32)')
        frames = getattr(self.denoiser, 'num_frames', None)
        if frames is not None and len(self.latent_shape) == 4 and \
                self.latent_shape[1] > frames:
            raise ValueError(f'model.latent_shape {list(self.latent_shape)} has '
                             f'{self.latent_shape[1]} frames but model.denoiser.num_frames '
                             f'is {frames}: set num_frames to at least the latents\' frames')
        self._check_vae_fits(self.latent_shape[0], getattr(self.denoiser, 'pooled_dim', None),
                             load=False)
        learned = getattr(self.diffusion, 'model_var_type', None)
        sigma = getattr(self.denoiser, 'learn_sigma', None)
        if learned is not None and sigma is not None and sigma != (learned == 'learned_range'):
            raise ValueError(f'model.denoiser.learn_sigma={sigma} but model.diffusion.'
                             f'learn_sigma={learned == "learned_range"}: set both alike (True: '
                             'the denoiser predicts the variance too, as DiT)')

    def _check_vae_fits(self, latent_channels, pooled_dim=None, load=True):
        """Refuse a decoder made for other latents or pooled text embeddings (a VAE
        with ``check_fits``: Stable Cascade's Stage B), in one line naming its folder
        and both widths. Before, a Stage B made for 8-channel Stage C latents failed
        only after every sampling step, in a raw convolution error; at build time
        (``load=False``) it is checked where its config.json is already there."""
        check = getattr(self.vae, 'check_fits', None)
        if check is not None:
            check(latent_channels, pooled_dim, load=load)

    def init_weights(self):
        """Denoisers initialise themselves; then load ``pretrained_denoiser`` if set."""
        super().init_weights()
        if self.pretrained_denoiser:
            self.load_pretrained_denoiser(self.pretrained_entry)

    def load_pretrained_denoiser(self, entry: str = 'auto', entry_only: bool = False) -> bool:
        """Load ``pretrained_denoiser`` into the denoiser, strictly, or inflated into a
        video denoiser: ``entry`` of a training file (see ``pretrained_entry``), any
        other file as it is (a work dir's dumped config keeps the entry its run took,
        given another file). mmsora's ``EMAHook`` calls it with ``'ema'`` on its
        average's copy of this model, which then starts from the file's EMA as this
        model does from its ``'model'`` weights.

        Args:
            entry (str): ``'model'``, ``'ema'`` or ``'auto'`` (:data:`PRETRAINED_ENTRIES`).
            entry_only (bool): Load nothing where the file is not a training file
                holding ``entry``, instead of loading it as it is.

        Returns:
            bool: Whether the weights were loaded.
        """
        from mmsora.utils.checkpoint import load_checkpoint_file
        from mmsora.utils.weight_loading import extract_state_dict, load_state_dict_checked
        path = self.pretrained_denoiser
        # An mmsora (mmengine) run keeps the denoiser's weights under 'denoiser.'. The
        # file is read once (a DiT's was read again to load it: a diffusers folder
        # converted twice).
        obj = load_checkpoint_file(path)
        run = isinstance(obj, dict) and 'state_dict' in obj
        if entry != 'auto' and (run or not isinstance(obj, dict) or entry not in obj):
            if entry_only:
                return False
            entry = 'auto'
        state_dict = extract_state_dict(obj, key=entry, prefix='denoiser.' if run else None)
        del obj
        taken = f" (its '{entry}' weights)" if entry != 'auto' else ''
        if not hasattr(self.denoiser, 'load_image_dit') or 'temp_embed' in state_dict:
            # the denoiser's own weights (another input size or class count: the model
            # keeps its own tables)
            load_state_dict_checked(self.denoiser, state_dict, path, fine_tune=True,
                                    objective=self.diffusion)
            video = ' the video model' if hasattr(self.denoiser, 'load_image_dit') else ''
            print_log(f'pretrained_denoiser: loaded{video} {path}{taken}', logger='current')
        else:  # an image DiT: inflated exactly, strictly
            self.denoiser.load_image_dit(state_dict, source=path)
            print_log(f'pretrained_denoiser: inflated the image DiT {path}{taken} into '
                      f'{type(self.denoiser).__name__} (temporal layers start as the '
                      'identity)', logger='current')
        return True

    # ------------------------------------------------------------------ #
    #                               Training                             #
    # ------------------------------------------------------------------ #
    def forward(self,
                latents: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                images: Optional[torch.Tensor] = None,
                caption: Optional[Sequence[str]] = None,
                text_embeds: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None,
                pooled_text_embeds: Optional[torch.Tensor] = None,
                mode: str = 'loss',
                sample_kwargs: Optional[dict] = None,
                sample_idx: Optional[torch.Tensor] = None,
                **others):
        """mmengine entry point: ``mode='loss'`` returns the loss dict.

        ``mode='predict'`` samples one latent per label with the default sampler, or
        with ``sample_kwargs`` calls :meth:`sample` with them (how an FSDP-sharded
        model samples: through the root's forward, which gathers its weights).
        Class-conditional denoisers read ``labels`` (a ``caption`` is then ignored);
        text-conditioned ones read ``text_embeds`` / ``text_mask`` /
        ``pooled_text_embeds`` (from a latent store written with a text encoder), or
        encode ``caption`` with ``text_encoder``. ``sample_idx``, the items' dataset
        indices (mmsora's datasets give them; LossGuardHook takes them out of the batch
        to name an item with NaN inputs), is not used here: where no hook took it (the
        guard off, tools/benchmark.py) it arrives and is ignored. Any other key of a
        batch (a dataset's item) is refused, naming what the batch may hold.
        """
        if others:  # before: "forward() got an unexpected keyword argument 'x'", a traceback
            raise ValueError(
                f'the batch holds {", ".join(map(repr, others))}, which '
                f'{type(self).__name__} does not take: a dataset\'s items give \'latents\' '
                "(or 'images' with a model.vae) with 'labels', or 'text_embeds' / "
                "'text_mask' (/ 'pooled_text_embeds') or 'caption' for a text model "
                "(README: 'A dataset ... returns dict items')")
        if mode == 'loss':
            return self.loss(latents=latents, labels=labels, images=images, caption=caption,
                             text_embeds=text_embeds, text_mask=text_mask,
                             pooled_text_embeds=pooled_text_embeds)
        if mode == 'predict':
            if sample_kwargs is None:
                return self.sample(labels)
            if labels is not None:
                raise ValueError("mode='predict': give the labels in sample_kwargs, "
                                 'not beside them')
            return self.sample(**sample_kwargs)
        raise ValueError(f"mode must be 'loss' or 'predict', got {mode!r}")

    def loss(self,
             latents: Optional[torch.Tensor] = None,
             labels: Optional[torch.Tensor] = None,
             images: Optional[torch.Tensor] = None,
             caption: Optional[Sequence[str]] = None,
             text_embeds: Optional[torch.Tensor] = None,
             text_mask: Optional[torch.Tensor] = None,
             pooled_text_embeds: Optional[torch.Tensor] = None,
             sample_idx: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One training step's loss: latents -> (t, noise, predict: the objective) -> loss.
        Takes a dataset's batch as it is (``model.loss(**batch)``: its ``sample_idx``,
        the items' indices, is not used here)."""
        source = latents if latents is not None else images
        if source is None:
            raise ValueError('LatentDiffusion.loss needs `latents` or `images` in the batch')
        # Every random draw of the step happens in here: the VAE's posterior sample, the
        # objective's timesteps and noise, the denoiser's label / caption drops.
        with self._training_draws(len(source)):
            x = self._latents_from(latents, images)               # (N, C, [T,] H, W)
            self._check_latent_shape(x)
            if self.text_conditioned:
                model_kwargs = self._text_kwargs(x, caption, text_embeds, text_mask,
                                                 pooled_text_embeds)
            else:
                labels = self._unconditional_labels(labels, x)
                model_kwargs = dict(y=labels)
            terms = self.diffusion.loss(self.denoiser_in_weight_dtype(), x,
                                        model_kwargs=model_kwargs)
        if not (isinstance(terms, dict) and torch.is_tensor(terms.get('loss'))):
            got = (f"a dict with keys {', '.join(map(repr, terms))}" if isinstance(terms, dict)
                   else f'a {type(terms).__name__}')
            raise ValueError(f'{type(self.diffusion).__name__}.loss returned {got}: it '
                             "returns a dict whose 'loss' is the per-sample loss (N,) "
                             '(other entries are logged)')
        # Only keys containing 'loss' are summed by mmengine; the rest are logged.
        out = dict(loss=terms['loss'].mean())
        for key, value in terms.items():
            if key != 'loss':
                out[key] = value.detach().float().mean()
        return out

    def denoiser_in_weight_dtype(self, fn=None, float_output: bool = False):
        """The denoiser (or ``fn``, one of its methods), called with its float inputs
        in its weights' dtype.

        Under AMP the weights are float32 (autocast does the rest) and this is the
        denoiser itself. DeepSpeed's bf16 / fp16 turn the module's weights to half
        precision while the objective builds ``x_t`` in float32: the call casts ``x``
        and the float conditioning (not the timesteps) to the weights' dtype. With
        ``float_output`` the output comes back in ``x``'s dtype (the samplers' state
        stays float32 between steps; a float64 model sampled from float64 noise, as a
        parity check against DiT's loop runs, stays float64: it was cut to float32).
        """
        fn = self.denoiser if fn is None else fn
        dtype = next(self.denoiser.parameters()).dtype
        if dtype == torch.float32:
            return fn

        def cast(value):
            return (value.to(dtype) if torch.is_tensor(value) and value.is_floating_point()
                    else value)

        def call(x, t, **kwargs):
            out = fn(cast(x), t, **{k: cast(v) for k, v in kwargs.items()})
            # (not a tensor: the objective names what the denoiser returned)
            return out.to(x.dtype) if float_output and torch.is_tensor(out) else out
        return call

    def _training_draws(self, n):
        """Per-sample generators for this step's draws when ``train_noise_seed`` is set."""
        if self.train_noise_seed is None:
            return contextlib.nullcontext()
        rank, world_size = get_dist_info()
        hub = MessageHub.get_current_instance()
        iteration = hub.get_info('iter')
        if iteration is None:  # no Runner (a script calling loss): count the calls
            iteration = self._calls_without_runner
            self._calls_without_runner += 1
        # With gradient accumulation (ResumeCheckHook publishes it) the k iterations
        # of an optimizer step are micro-batches of one global batch: key by the step
        # and the place in it, as k processes would hold them.
        step, micro = divmod(iteration, hub.get_info('accumulative_counts') or 1)
        seeds = sample_rng.sample_seeds(
            self.train_noise_seed, step,
            [(micro * n + i) * world_size + rank for i in range(n)])
        return sample_rng.per_sample_generators(sample_rng.make_generators(seeds))

    def parse_losses(self, losses):
        """mmengine's sum of the ``loss`` terms; the logged values are averaged over
        the processes (one small all-reduce), so the log shows the global batch's loss
        as DiT's does, not process 0's part of it. The returned loss stays local."""
        loss, log_vars = super().parse_losses(losses)
        if get_dist_info()[1] > 1:
            values = torch.stack([v.detach().float() for v in log_vars.values()])
            all_reduce(values, op='mean')
            log_vars = OrderedDict(zip(log_vars.keys(), values.unbind()))
        return loss, log_vars

    def _latents_from(self, latents, images):
        # float64 (numpy's default, a dataset's torch.from_numpy) is cast to float32
        # rather than refused: the weights are float32 and the first layer failed with
        # 'Input type (double) and bias type (float) should be the same'. float16 /
        # bfloat16 latents are left as they are: the objective's float32 tables promote
        # x_t to float32.
        if latents is not None:
            return latents.float() if latents.dtype == torch.float64 else latents
        if images is not None and images.dtype == torch.float64:
            images = images.float()
        if self.vae is None:  # pixel space: the pictures / clips are the latents
            return images
        with torch.no_grad():
            return self.vae.encode(images)

    @property
    def text_conditioned(self) -> bool:
        """Whether the denoiser reads text tokens (``condition == 'text'``), not labels."""
        return getattr(self.denoiser, 'condition', 'class') == 'text'

    def encode_text(self, captions: Sequence[str]):
        """``(embeds, mask, pooled)`` of captions through ``text_encoder``."""
        if self.text_encoder is None:
            raise ValueError('this text-conditioned model has no text encoder to encode '
                             'captions/prompts: set model.text_encoder (e.g. dict(type='
                             "'HFTextEncoder', pretrained_path=...)) or pass text embeddings")
        device = next(self.denoiser.parameters()).device
        return self.text_encoder.encode(list(captions), device=device)

    def _text_kwargs(self, x, caption, embeds, mask, pooled):
        """Model kwargs of a text-conditioned denoiser: ``y`` (tokens), ``mask``, ``pooled``."""
        source = 'in the batch (text_embeds)'
        if embeds is None:
            if caption is None:
                raise ValueError(
                    'the denoiser is text-conditioned but the batch has neither '
                    '`text_embeds` (extract them with tools/extract_features.py '
                    '--text-encoder) nor `caption`s to encode')
            if isinstance(caption, str):  # (iterated: one caption per letter)
                if len(x) != 1:
                    raise ValueError(f'caption is one string for a batch of {len(x)} '
                                     f'latents: give a list of {len(x)} captions, one per '
                                     'latent')
                caption = [caption]
            if len(caption) != len(x):
                raise ValueError(f'got {len(caption)} captions for {len(x)} latents: give '
                                 'one caption per latent')
            embeds, mask, pooled = self.encode_text(caption)
            source = 'from the text encoder'
        if embeds.dim() != 3 or len(embeds) != len(x):
            raise ValueError(f'text_embeds must be (N={len(x)}, L, D), got shape '
                             f'{tuple(embeds.shape)}')
        self._check_text_width(embeds, source, f'set model.denoiser.text_dim='
                                               f'{embeds.shape[-1]}')
        return self._text_model_kwargs(embeds, mask, pooled, x.device, x.dtype)

    def _check_text_width(self, embeds, source, fix):
        """One-line ValueError for text tokens of another width than the denoiser's
        ``text_dim``, ending with what to do (``fix``)."""
        text_dim = getattr(self.denoiser, 'text_dim', None)
        if text_dim is not None and embeds.shape[-1] != text_dim:
            raise ValueError(f'text tokens {source} are {embeds.shape[-1]} wide but '
                             f'model.denoiser.text_dim is {text_dim} (T5-small: 512, '
                             f'T5-base: 768, T5-XXL: 4096): {fix}')

    def _text_model_kwargs(self, embeds, mask, pooled, device, dtype):
        """``dict(y=tokens, mask=mask[, pooled=pooled])`` on ``device`` / ``dtype``;
        pooled embeddings only for a denoiser that reads them (``pooled_dim``: Stable
        Cascade's). A CLIP store's or encoder's pooled embedding reached VideoDiT,
        which conditions on the tokens alone: a TypeError traceback."""
        kwargs = dict(y=embeds.to(device, dtype),
                      mask=None if mask is None else mask.to(device))
        if pooled is not None and getattr(self.denoiser, 'pooled_dim', None):
            kwargs['pooled'] = pooled.to(device, dtype)
        return kwargs

    def _check_latent_shape(self, x):
        if tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(
                f'latents of shape {tuple(x.shape[1:])} do not fit the config '
                f'(model.latent_shape={self.latent_shape}); check the dataset '
                'or the model size in the config')

    def _unconditional_labels(self, labels, x):
        """A batch's labels, checked (:meth:`_check_labels`). A one-class model is
        unconditional: no label or -1 ("none") means class 0. Labels given as a list
        (DiT-style calls) become a tensor on ``x``'s device."""
        if labels is not None and not torch.is_tensor(labels):
            labels = torch.as_tensor(labels, device=x.device)  # (1.5 is refused, not cut)
        if self.num_classes == 1 and labels is None:
            return torch.zeros(len(x), dtype=torch.long, device=x.device)
        if labels is not None and tuple(labels.shape) != (len(x),):
            # (N, 1) failed deep in DiT ('not enough values to unpack'), N + 1 labels
            # in a size mismatch of its blocks
            hint = ('; (N, 1)? squeeze them (labels.squeeze(1): a fast-DiT label file '
                    'holds shape (1,))' if labels.dim() == 2 and labels.shape[1] == 1
                    else '')
            raise ValueError(f"the batch's labels must be (N,) = ({len(x)},), one class "
                             f'id per latent, got shape {tuple(labels.shape)}{hint}')
        self._check_labels(labels, null=(-1,) if self.num_classes == 1 else ())
        labels = labels.long()
        return labels.clamp(min=0) if self.num_classes == 1 else labels

    def _check_labels(self, labels, where="the batch's labels", null=()):
        """Refuse labels the model has no class for, as the ``--labels`` option and a
        latent store are refused (one rule: ``check_label_range``)."""
        if labels is None:
            raise ValueError('the batch has no `labels`; class-conditional models need them')

        def explain(sentence, bad):
            both = (' model.denoiser.num_classes=1' if self._denoiser_classes() is not None
                    else '')  # (set alike, or _check_parts_agree refuses it)
            hint = (' (label -1 marks a manifest row without a label: add a label column, '
                    f'or set model.num_classes=1{both} for an unconditional model)'
                    if bad[0] == -1 else '')
            return (f'{sentence} (model.num_classes={self.num_classes}: labels must lie '
                    f'in [0, {self.num_classes}), got min {int(labels.min())} max '
                    f'{int(labels.max())}){hint}')
        check_label_range(labels, self.num_classes, where, null=null, error=ValueError,
                          explain=explain)

    # ------------------------------------------------------------------ #
    #                               Sampling                             #
    # ------------------------------------------------------------------ #
    @torch.no_grad()
    def sample(self,
               labels: Union[torch.Tensor, Sequence[int], None] = None,
               sampler: Optional[str] = None,
               num_steps: Optional[int] = None,
               cfg_scale: float = 1.0,
               seeds: Union[int, Sequence[int], None] = None,
               noise: Optional[torch.Tensor] = None,
               decode: bool = True,
               progress: bool = False,
               guidance_channels: Optional[int] = None,
               prompts: Optional[Sequence[str]] = None,
               text_embeds: Optional[torch.Tensor] = None,
               text_mask: Optional[torch.Tensor] = None,
               pooled_text_embeds: Optional[torch.Tensor] = None,
               precision: Optional[str] = None,
               **sampler_kwargs) -> torch.Tensor:
        """Generate one sample per label or prompt (DiT's ``sample.py``).

        Args:
            labels: Class ids, shape (N,), for class-conditional denoisers.
            sampler: A sampler of the objective: for ``GaussianDiffusion``
                ``'ddpm'``, ``'ddim'`` or a diffusers scheduler registered in
                ``NOISE_SCHEDULERS`` (e.g. ``'DPMSolverMultistepScheduler'``); for
                ``Transport`` ``'ode_euler'``, ``'sde_euler'``, ... . An unknown name
                fails with the list of those the objective accepts. None: the
                objective's default (GaussianDiffusion: ``'ddpm'``; Transport:
                SiT's ``'sde_euler'``).
            num_steps: Number of sampling steps; None: the objective's default.
            cfg_scale: Classifier-free guidance scale, a finite number; 1 disables
                guidance.
            seeds: One seed per sample, or an int ``s`` for ``s, s + 1, ...`` (as
                :func:`~mmsora.apis.inference.sample_images`): sample i's noise (start
                and stochastic steps) depends on its seed only, not on the batch it is
                drawn in.
            noise: Starting noise (N, *latent_shape), N the labels' or prompts'
                count; overrides ``seeds`` for the start. float64 noise is cast to
                float32 for a float32 model (as ``loss`` casts latents).
            decode: Decode through the VAE when the model has one; a VAE whose
                ``decode`` takes ``pooled`` (Stable Cascade's Stage B) gets the
                samples' pooled text embeddings, and is checked against the latents'
                channels and the pooled width before sampling.
            progress: Show a progress bar over sampling steps.
            guidance_channels: Channels guided by CFG; default is the denoiser's.
            prompts: N captions (str; one str: one sample), for text-conditioned
                denoisers (encoded by ``text_encoder``); or give their
            text_embeds / text_mask / pooled_text_embeds: pre-computed
                (N, L, D) tokens, (N, L) mask and (N, D2) pooled embeddings.
                With guidance the unconditional half uses the denoiser's null caption.
            precision: The denoiser's arithmetic: ``'fp32'`` (full float32: TF32 off
                on a GPU for the sampling); ``'tf32'`` (float32 with TF32 matrix
                products and convolutions on Ampere and newer, as DiT's ``sample.py``;
                fp32 elsewhere); ``'bf16'`` / ``'fp16'`` (each denoiser call under
                autocast, as Open-Sora samples in bf16: flash attention on a GPU;
                adaptive ODE solvers then take more steps at their default rtol).
                The sampler's state between steps, the text encoder and the VAE stay
                float32. A denoiser whose weights are half precision already (a
                DeepSpeed bf16 / fp16 run's) computes in its own dtype. None (the
                default): float32 with the process's TF32 settings as they are.
            **sampler_kwargs: Options of the sampler (``eta`` for DDIM, ``atol`` /
                ``rtol`` for dopri5, ...), checked by the objective.

        Returns:
            Decoded images in [-1, 1] (N, 3, H, W) with a VAE, else latents.
        """
        check_sampling_precision(precision)
        cfg_scale = check_cfg_scale(cfg_scale)  # (a 0-d tensor: a float)
        device = next(self.denoiser.parameters()).device
        cond = self._sample_condition(labels, prompts, text_embeds, text_mask,
                                      pooled_text_embeds, device)
        n = len(cond['y'])
        if seeds is not None:
            seeds = sample_rng.seed_list(seeds, n)
        # One generator per sample: its starting noise and every step's noise depend
        # on its seed only, so a sample does not change with the batch it is in.
        generators = sample_rng.make_generators(seeds) if seeds is not None else None
        if noise is None:
            noise = sample_rng.sampling_noise((n, *self.latent_shape), generators, device)
        else:
            noise = self._checked_noise(noise, n, 'labels' if not self.text_conditioned
                                        else 'prompts' if prompts is not None
                                        else 'text_embeds', device)
        decode = decode and self.vae is not None
        decode_kwargs = self._decode_text_kwargs(cond) if decode else {}
        if decode:  # before the sampling steps, not after them
            pooled = decode_kwargs.get('pooled')
            self._check_vae_fits(noise.shape[1], None if pooled is None else pooled.shape[-1])
        model_fn, x, kwargs = self.denoiser, noise, cond
        use_cfg = cfg_scale != 1.0
        if use_cfg and not hasattr(self.denoiser, 'forward_with_cfg'):  # (an
            # AttributeError traceback, for a denoiser of one's own)
            raise ValueError(f'{type(self.denoiser).__name__} has no forward_with_cfg: it '
                             f'cannot sample with guidance (cfg_scale={cfg_scale}); sample '
                             'with cfg_scale 1 (tools/infer.py --cfg-scale 1; in a config '
                             'sample_cfg.cfg_scale=1, the evaluation\'s evaluation.'
                             'sample_cfg.cfg_scale=1), or add forward_with_cfg as DiT has it '
                             '(README, "Your own modules")')
        if use_cfg:
            self._check_denoiser_signature('forward_with_cfg')
            # The guided batch is doubled; its second half's noise is never used.
            generators = generators + generators if generators is not None else None
            # DiT's sample.py: conditional half then the null label; the denoiser
            # combines both halves and returns the guided output twice. Text
            # denoisers put their learned null caption in the second half themselves.
            x = torch.cat([noise, noise])
            kwargs = dict(cond, cfg_scale=cfg_scale)
            if not self.text_conditioned:
                self._check_null_label_row(cfg_scale)
                kwargs['y'] = torch.cat([cond['y'], torch.full_like(cond['y'], self.num_classes)])
            if guidance_channels is not None:
                kwargs['guidance_channels'] = guidance_channels
            model_fn = self.denoiser.forward_with_cfg
        # Half-precision weights (a DeepSpeed bf16 / fp16 module during training)
        # compute in their dtype: autocast to the other half type fails in torch
        half_weights = next(self.denoiser.parameters()).dtype != torch.float32
        model_fn = self.denoiser_in_weight_dtype(model_fn, float_output=True)
        if not half_weights:
            model_fn = _in_precision(model_fn, precision, device)
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            # Unset sampler / steps fall back to the objective's signature defaults.
            chosen = {k: v for k, v in dict(sampler=sampler, num_steps=num_steps).items()
                      if v is not None}
            with _float32_products(precision, device):
                z = self.diffusion.sample(model_fn, x, kwargs, generators=generators,
                                          progress=progress, **chosen, **sampler_kwargs)
        except IndexError as e:
            # a label table of one's own without the null row (nn.Embedding's message)
            if not (use_cfg and not self.text_conditioned
                    and 'index out of range in self' in str(e)):
                raise
            raise ValueError(self._null_label_message(
                cfg_scale, "its label table has no row for it ('index out of range')")) from e
        finally:
            self.denoiser.train(was_training)
        if use_cfg:
            z = z[:n]
        if decode:
            if 'progress' in inspect.signature(self.vae.decode).parameters:
                decode_kwargs['progress'] = progress  # Stable Cascade's Stage B bar
            return self.vae.decode(z, **decode_kwargs)
        return z

    def _checked_noise(self, noise, n, given, device):
        """``noise`` of ``sample``: refused in one line unless it is ``(n,
        *latent_shape)``; float64 cast to float32 for a float32 model, as ``loss``
        casts latents (a float64 model samples float64 noise in float64)."""
        noise = torch.as_tensor(noise, device=device)
        # (a torch RuntimeError for another batch, DiT's AssertionError for another
        # size, 'Input type (double) and bias type (float)' for float64)
        if tuple(noise.shape) != (n, *self.latent_shape):
            raise ValueError(f'noise must be (N, *model.latent_shape) = '
                             f'{(n, *self.latent_shape)} for the {n} samples of the '
                             f'{given} given, got shape {tuple(noise.shape)}')
        if noise.dtype == torch.float64 and \
                next(self.denoiser.parameters()).dtype != torch.float64:
            noise = noise.float()
        return noise

    def _check_null_label_row(self, cfg_scale):
        """Refuse guidance with a label table (DiT's ``y_embedder``) that has no row for
        the null label ``num_classes`` (DiT's with ``class_dropout_prob=0``), before the
        sampling steps; other denoisers' tables are caught by their IndexError."""
        embedder = getattr(self.denoiser, 'y_embedder', None)
        if not isinstance(embedder, torch.nn.Module):
            return
        tables = [m for m in embedder.modules() if isinstance(m, torch.nn.Embedding)]
        if len(tables) == 1 and tables[0].num_embeddings <= self.num_classes:
            raise ValueError(self._null_label_message(
                cfg_scale, f'its label table (y_embedder) has {tables[0].num_embeddings} '
                'rows'))

    def _null_label_message(self, cfg_scale, detail):
        """Guidance's null label is missing from the denoiser's label table."""
        return (f'{type(self.denoiser).__name__} cannot sample with guidance (cfg_scale='
                f'{cfg_scale}): the null label is num_classes={self.num_classes}, and '
                f'{detail}: give the table num_classes + 1 rows (nn.Embedding(num_classes '
                '+ 1, ...); DiT: class_dropout_prob > 0), or sample with cfg_scale=1 '
                '(tools/infer.py --cfg-scale 1; in a config sample_cfg.cfg_scale=1, the '
                "evaluation's evaluation.sample_cfg.cfg_scale=1)")

    def _decode_text_kwargs(self, cond):
        """The samples' pooled text embeddings for a VAE whose ``decode`` reads them
        (Stable Cascade's Stage B, as diffusers' ``StableCascadeDecoderPipeline``:
        the text encoder's pooled ``text_embeds``, the ones Stage C is given), and, for
        the VAE's own guidance (``guidance_scale > 1``), the pooled embedding of the
        empty caption as its negative, as that pipeline's.

        Before, ``decode(z)`` was called without them and Stage B saw zeros in place
        of the prompt. Class-conditional models and VAEs without ``pooled`` (the SD
        VAE of DiT) get nothing.
        """
        pooled = cond.get('pooled') if self.text_conditioned else None
        params = inspect.signature(self.vae.decode).parameters
        if pooled is None or 'pooled' not in params:
            return {}
        kwargs = dict(pooled=pooled)
        if getattr(self.vae, 'guidance_scale', 0) > 1 and 'negative_pooled' in params \
                and self.text_encoder is not None:
            kwargs['negative_pooled'] = self.encode_text([''])[2]
        return kwargs

    def _sample_condition(self, labels, prompts, text_embeds, text_mask, pooled, device):
        """The conditional model kwargs of a batch of samples (labels or text)."""
        if not self.text_conditioned:
            if labels is None:
                raise ValueError('this model is class-conditional: give labels')
            labels = torch.as_tensor(labels, device=device).reshape(-1)
            self._check_labels(labels, 'labels')  # (1.5 is refused, not cut to class 1)
            return dict(y=labels.long())
        if prompts is not None:
            prompts = prompt_list(prompts)
            if callable(getattr(self.text_encoder, 'note_long_prompts', None)):
                self.text_encoder.note_long_prompts(prompts)  # (cut without a word)
            text_embeds, text_mask, pooled = self.encode_text(prompts)
            self._check_text_width(text_embeds, 'from the text encoder',
                                   'give the text encoder the model was trained with '
                                   '(model.text_encoder.pretrained_path)')
        elif text_embeds is None:
            raise ValueError('this model is text-conditioned: give prompts (with '
                             'model.text_encoder set) or text_embeds')
        else:
            self._check_text_width(text_embeds, 'given (text_embeds)',
                                   'give the embeddings of the text encoder the model '
                                   'was trained with')
        dtype = next(self.denoiser.parameters()).dtype
        return self._text_model_kwargs(text_embeds, text_mask, pooled, device, dtype)


# Sampling precisions (LatentDiffusion.sample): the autocast dtype of each denoiser
# call ('fp32' / 'tf32' are float32, with TF32 products off / on on a GPU; None
# leaves the process's settings as they are).
SAMPLING_PRECISIONS = {None: None, 'fp32': None, 'tf32': None, 'bf16': torch.bfloat16,
                       'fp16': torch.float16}


def check_cfg_scale(cfg_scale):
    """One-line ValueError for a guidance scale that is not a finite real number (a
    str from a notebook was torch's 'only integer tensors of a single element can be
    converted', a bool a scale of 1 or 0, NaN gave NaN samples): the one check of
    :meth:`LatentDiffusion.sample` and :func:`~mmsora.apis.inference.sample_images`.
    Its range is the tools' to set (tools/infer.py's ``--cfg-scale`` >= 1,
    tools/text2video.py's >= 0).

    Returns:
        The scale: an int or float as given; a 0-d real tensor or numpy array, or a
        numpy scalar, as a float (``torch.tensor(2.)`` is a number to its user, and
        was refused). Bool and complex ones, and tensors of several elements, are not.
    """
    value = cfg_scale
    if isinstance(cfg_scale, torch.Tensor):
        if cfg_scale.ndim == 0 and cfg_scale.dtype != torch.bool \
                and not cfg_scale.is_complex():
            value = cfg_scale.item()
    elif getattr(cfg_scale, 'ndim', None) == 0 and \
            getattr(getattr(cfg_scale, 'dtype', None), 'kind', None) in ('i', 'u', 'f'):
        value = cfg_scale.item()  # (numpy: a 0-d array or a scalar)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value):
        raise ValueError(f'cfg_scale must be a finite number (the guidance scale; 1: none), '
                         f'got {cfg_scale!r}')
    return cfg_scale if type(cfg_scale) in (int, float) else float(value)


def prompt_list(prompts) -> list:
    """``prompts`` (of :meth:`LatentDiffusion.sample` and
    :func:`~mmsora.apis.inference.sample_images`) as a list of captions, one per
    sample; one str is one caption (it was sliced into its characters). Anything but
    a non-empty sequence of str is refused in one line naming ``prompts``:
    ``prompts=3`` was 'int object is not iterable', ``[3]`` an error in the
    tokenizer. A set is refused too: its order (of str: their hashes) changes from
    one process to the next, and caption i with it."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Set) and not isinstance(prompts, KeysView):  # (a dict's keys
        # keep their order; a frozenset does not)
        raise ValueError(f'prompts is a {type(prompts).__name__}, whose order changes from '
                         'one run to the next (caption i is sample i\'s): give a list, '
                         'e.g. sorted(prompts)')
    if isinstance(prompts, (bytes, dict)) or not isinstance(prompts, Iterable) or \
            getattr(prompts, 'ndim', 1) == 0:
        raise ValueError(f"prompts must be a list of captions (str), one per sample "
                         f"(prompts=['a red bike'] for one sample), got {prompts!r}")
    prompts = list(prompts)
    if not prompts:  # (torch.cat(): expected a non-empty list of Tensors)
        raise ValueError('prompts is empty: give one caption per sample')
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f'prompts[{i}] is {prompt!r}, not a caption: prompts must be '
                             'a list of str, one per sample')
    return prompts


def check_sampling_precision(precision) -> None:
    """One-line ValueError for a sampling precision not in :data:`SAMPLING_PRECISIONS`
    (also checked in a config's ``sample_cfg`` before training starts)."""
    if precision not in SAMPLING_PRECISIONS:
        raise ValueError(f'precision={precision!r}: sampling precisions are '
                         f'{", ".join(p for p in SAMPLING_PRECISIONS if p)}')


def _in_precision(fn, precision, device: torch.device):
    """``fn`` (a denoiser call) under autocast to ``precision``'s dtype ('bf16' /
    'fp16'), or with autocast off ('fp32' / 'tf32': an autocast region the caller
    opened does not reach it), its output back in float32; ``fn`` itself for None."""
    if precision is None:
        return fn
    dtype = SAMPLING_PRECISIONS[precision]

    def call(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                            enabled=dtype is not None):
            out = fn(*args, **kwargs)
        return out.float() if torch.is_tensor(out) else out
    return call


@contextlib.contextmanager
def _float32_products(precision, device: torch.device):
    """On a GPU, float32 matrix products and cuDNN convolutions in TF32 for 'tf32' and
    in full float32 for the other precisions inside the block (the training's TF32
    setting reached an 'fp32' sampling hook's samples), put back after; nothing for
    None or on the CPU (the setting reaches oneDNN's products there). Through the
    per-backend ``fp32_precision`` settings: the legacy
    ``get_float32_matmul_precision`` refuses to read after the new API was used."""
    if precision is None or device.type != 'cuda':
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = 'tf32' if precision == 'tf32' else 'ieee'
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


@contextlib.contextmanager
def _seeded(seed: Optional[int]):
    """Run the block on torch's global CPU generator seeded with ``seed`` (CUDA
    generators untouched); with None, on the global generator as it is.

    Afterwards a process whose generator stood at the very start of ``seed``'s stream
    (mmengine's Runner seeds it just before it builds the model; rank 0 under
    ``diff_rank_seed``) goes on after the weights' draws, exactly as without
    ``init_seed``; any other process gets its own state back, so its later draws are
    the ones it would have made and never reuse the numbers the weights took."""
    if seed is None:
        yield
        return
    before = torch.get_rng_state()
    start = torch.Generator().manual_seed(seed).get_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if not torch.equal(before, start):
            torch.set_rng_state(before)

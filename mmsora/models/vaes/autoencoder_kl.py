"""Frozen KL autoencoder (Stable Diffusion VAE) that maps images to scaled latents.

Wraps diffusers' ``AutoencoderKL`` (Rombach et al., "High-Resolution Image Synthesis
with Latent Diffusion Models", 2022). The latent scale factor lives here, not in the
models: ``latents = (z - shift_factor) * scale_factor``, 0.18215 for SD VAEs as in DiT.
Videos ``(N, C, T, H, W)`` are encoded frame by frame (the SD VAE is per-image).
"""
import os.path as osp

import torch
import torch.nn as nn
from diffusers import AutoencoderKL

from mmsora.registry import MODELS
from mmsora.utils import diffusers_weights, sample_rng
from mmsora.utils.checkpoint import (folder_model, hub_snapshot, local_pretrained_kwargs,
                                     read_json_config)
from mmsora.utils.diffusers_weights import WEIGHT_FILES_SAID

__all__ = ['AutoencoderKLWrapper', 'vae_folder', 'vae_folder_config', 'check_vae_weights',
           'folder_scaling_factor']


def folder_vae_class(folder: str):
    """The diffusers class a model folder was saved from (``config.json``'s
    ``_class_name``), or None where it does not say."""
    found = (read_json_config(osp.join(folder, 'config.json')) or {}).get('_class_name')
    return found if isinstance(found, str) else None


def vae_folder(path: str, subfolder=None) -> str:
    """The folder a VAE loads from: ``path/subfolder``, or a pipeline folder's
    ``vae/`` when ``path`` has no config.json of its own (``path`` a Hugging Face cache
    folder: in its snapshot)."""
    path = hub_snapshot(path)
    if subfolder is None and not osp.isfile(osp.join(path, 'config.json')) \
            and osp.isfile(osp.join(path, 'vae', 'config.json')):
        subfolder = 'vae'
    return osp.join(path, subfolder) if subfolder else path


def folder_scaling_factor(path: str, subfolder=None):
    """The ``scaling_factor`` a VAE folder's config.json gives (0.18215 for SD's VAEs,
    0.13025 for SDXL's), read without loading the VAE; None when it gives none."""
    from mmsora.utils.checkpoint import read_json_config
    config = read_json_config(osp.join(vae_folder(path, subfolder), 'config.json'))
    found = config.get('scaling_factor') if config else None
    return float(found) if isinstance(found, (int, float)) else None


def check_vae_kind(folder: str, wanted: str) -> None:
    """Refuse a folder of another VAE class than ``wanted``: diffusers loaded it into
    the wrong class and failed with dozens of size-mismatch lines. A transformers
    folder (a T5 or CLIP text encoder given as the VAE) failed in diffusers with 'no
    file named diffusion_pytorch_model.bin'."""
    found = folder_vae_class(folder)
    if found is None:
        holds = folder_model(folder)
        if holds and holds.startswith('transformers '):
            raise ValueError(
                f'VAE folder {folder!r} holds a {holds} (its config.json), not a diffusers '
                f'{wanted}: give the VAE\'s folder (a text encoder goes to '
                'extract_features.py --text-encoder; in a config, to HFTextEncoder)')
        return
    if found == wanted:
        return
    if found == 'AutoencoderKL':
        hint = ('an image VAE: give it as one (extract_features.py --vae DIR; a config: '
                'AutoencoderKLWrapper)')
    elif found.startswith('AutoencoderKL'):
        hint = (f'a video VAE: give it as one (extract_features.py --video-vae DIR '
                f"--video-vae-class {found}; a config: VideoVAEWrapper with class_name="
                f"'{found}')")
    else:
        hint = (f'not a VAE: give a diffusers {wanted} folder (its config.json names '
                f"{wanted}; a pipeline's is its vae/)")
    raise ValueError(f'VAE folder {folder!r} holds {found} weights (its config.json), '
                     f'not {wanted} ones: {hint}')


def vae_folder_config(folder: str, wanted: str = 'AutoencoderKL') -> dict:
    """The ``config.json`` of a VAE folder (as :func:`vae_folder` resolves it), read
    without loading the VAE, refused where it is missing or names another class than
    ``wanted``: what the load reads first, and ``init_model`` before the sampling (the
    VAE loads only to decode: a wrong folder was named after every sampling step).
    ``{}`` where the file does not read as JSON (the load says why).

    Raises:
        FileNotFoundError: no config.json in ``folder``.
        ValueError: a folder of another model (:func:`check_vae_kind`).
    """
    if not osp.isfile(osp.join(folder, 'config.json')):
        raise FileNotFoundError(f'VAE folder {folder!r} has no config.json (not a '
                                f'diffusers {wanted} folder)' + _pipeline_without_vae(folder))
    check_vae_kind(folder, wanted)
    return read_json_config(osp.join(folder, 'config.json')) or {}


def folder_weights(folder: str):
    """The weights a diffusers model folder holds: ``{}`` for the plain files (or
    their shards, with their index), ``dict(variant=NAME)`` for a variant alone (fp16
    first), None for none of the names diffusers loads (:data:`WEIGHT_FILES_SAID`;
    :func:`mmsora.utils.diffusers_weights.folder_weights` says which, and raises for a
    damaged shard index or a shard it lists missing)."""
    found = diffusers_weights.folder_weights(folder)
    if found is None:
        return None
    return {} if found.variant is None else dict(variant=found.variant)


def weights_variant(folder: str) -> dict:
    """``dict(variant=NAME)`` for a folder holding only a variant of the weights
    (``diffusion_pytorch_model.fp16.safetensors``, as the hub's folders may), which
    diffusers reads only when asked (it said 'no file named ...', and the folder was
    said to hold no weights); ``{}`` otherwise."""
    return folder_weights(folder) or {}


def no_weights_error(folder: str, wanted: str = 'AutoencoderKL') -> FileNotFoundError:
    """The one line for a VAE folder with its config.json but no weights file."""
    return FileNotFoundError(
        f'VAE folder {folder!r} holds {wanted}\'s config.json but no weights '
        f'({WEIGHT_FILES_SAID}): copy them in beside it, or give the folder that holds them')


def check_vae_weights(folder: str, wanted: str = 'AutoencoderKL') -> None:
    """Refuse a VAE folder holding none of the weight files diffusers loads
    (:func:`folder_weights`), without loading them: ``init_model`` checks it before the
    sampling (the VAE loads only to decode: it was named after every sampling step).
    Shards count only with their index and every shard it lists.

    Raises:
        FileNotFoundError: :func:`no_weights_error`'s line (shards without their index
            too); a shard the index lists is missing.
        ValueError: the shard index is damaged.
    """
    if folder_weights(folder) is None:
        raise no_weights_error(folder, wanted)


def _pipeline_without_vae(folder: str) -> str:
    """': a StableDiffusionPipeline folder (model_index.json) without vae/' for a
    pipeline folder given as the VAE, else ''."""
    index = read_json_config(osp.join(folder, 'model_index.json'))
    if index is None:
        return ''
    return (f': a {index.get("_class_name") or "diffusers pipeline"} folder '
            '(model_index.json) without vae/')


@MODELS.register_module()
class AutoencoderKLWrapper(nn.Module):
    """Frozen diffusers ``AutoencoderKL`` with the latent scale and micro-batching.

    Args:
        pretrained_path (str, optional): LOCAL diffusers model folder (holding
            ``config.json`` and weights), e.g. a download of ``stabilityai/sd-vae-ft-ema``.
            Never fetched from the hub.
        subfolder (str, optional): Subfolder of ``pretrained_path`` holding the VAE
            (``'vae'`` in a full Stable Diffusion pipeline folder). When None and
            ``pretrained_path`` has no ``config.json`` but has ``vae/config.json``,
            ``'vae'`` is used.
        config (dict, optional): ``AutoencoderKL`` constructor arguments, to build a
            randomly initialised VAE (tests) instead of loading one.
        scale_factor (float): Latent scale. Defaults to 0.18215 (SD VAEs).
        shift_factor (float): Latent shift subtracted before scaling. Defaults to 0.
        micro_batch_size (int, optional): Most images (frames) through the VAE at once,
            to bound memory; None for all at once.
    """

    def __init__(self, pretrained_path=None, subfolder=None, config=None,
                 scale_factor=0.18215, shift_factor=0.0, micro_batch_size=None):
        super().__init__()
        if (pretrained_path is None) == (config is None):
            raise ValueError('give exactly one of pretrained_path (a local folder) or config')
        self.pretrained_path = pretrained_path
        self.subfolder = subfolder
        self.config = config
        self.scale_factor = float(scale_factor)
        self.shift_factor = float(shift_factor)
        self.micro_batch_size = micro_batch_size
        # The diffusers model is built on first use and kept out of nn.Module's
        # registration: a frozen VAE has no place in the trained model's state dict,
        # checkpoints, optimizer or EMA copy, and configs build without its weights.
        self.__dict__['_vae'] = None

    @property
    def vae(self):
        """The diffusers ``AutoencoderKL``, loaded (or built) on first access."""
        if self.__dict__['_vae'] is None:
            cls = self.model_class()
            vae = (cls(**self.config) if self.config is not None
                   else self._load(cls, self.pretrained_path, self.subfolder))
            vae.requires_grad_(False)
            self.__dict__['_vae'] = vae.eval()
        return self.__dict__['_vae']

    def _vae_on(self, device):
        """The VAE moved to ``device`` (a no-op once it is there)."""
        return self.vae.to(device)

    def model_class(self):
        """The diffusers model class this wrapper holds."""
        return AutoencoderKL

    def config_latent_channels(self, config):
        """The latent channels a config of :meth:`model_class` states (a folder's
        config.json, read before the load, or the loaded VAE's), or None."""
        found = config.get('latent_channels')
        return found if isinstance(found, int) and not isinstance(found, bool) else None

    def check_folder(self, sampling: bool = False) -> None:
        """Refuse, without loading it, a ``pretrained_path`` folder that holds another
        model than this wrapper's (a text encoder's, another VAE class), or this
        wrapper's config.json without weights (:func:`check_vae_weights`): what
        ``tools/train.py`` checks before the run (the VAE loads only when samples are
        decoded: a T5 folder given as the VAE, or one whose weights were not copied,
        trained a whole run, then stopped at a sampling hook or tools/infer.py). A
        folder not there (yet), or without a config.json, is left to the load.

        Args:
            sampling: the check before samples are drawn to be decoded (``init_model``:
                tools/infer.py, tools/test.py), where the load comes after every
                sampling step: a folder without config.json is refused too, in the
                load's words and errors (FileNotFoundError for a missing config.json or
                weights), and the note of a ``scale_factor`` other than the folder's is
                not said: the run's latents were extracted and trained at the
                config's scale (the store's is checked against it), so the folder's
                own would decode them wrong.

        Raises:
            ValueError: one line naming the folder (tools/train.py puts it under
                model.vae.pretrained_path).
        """
        if self.pretrained_path is None or not osp.isdir(self.pretrained_path):
            return
        folder = vae_folder(self.pretrained_path, self.subfolder)
        if sampling or osp.isfile(osp.join(folder, 'config.json')):
            wanted = self.model_class().__name__
            try:
                vae_folder_config(folder, wanted)  # (another model's: a ValueError)
                check_vae_weights(folder, wanted)
            except FileNotFoundError as e:  # (the load's and infer's line; a ValueError
                if sampling:                # as this check's other refusals before a run)
                    raise
                raise ValueError(str(e)) from None
        if sampling:
            return
        own = folder_scaling_factor(folder)
        if type(self) is AutoencoderKLWrapper and own is not None \
                and abs(own - self.scale_factor) > 1e-6 * own:
            # (an SDXL VAE, 0.13025, given to a config of SD's 0.18215: decoded 1.4x off
            # without a word; a scale of one's own may be meant: said, not refused)
            from mmsora.utils.cli import note
            note(f'VAE folder {folder} says scaling_factor {own:g}, model.vae.scale_factor '
                 f'is {self.scale_factor:g}: latents are scaled by {self.scale_factor:g} '
                 f'(the folder\'s own: model.vae.scale_factor={own:g})', once=True)

    @staticmethod
    def _load(cls, path, subfolder):
        if not osp.isdir(path):
            raise FileNotFoundError(f'VAE folder {path!r} does not exist (give a local '
                                    f'diffusers AutoencoderKL folder; nothing is downloaded)')
        folder = vae_folder(path, subfolder)
        vae_folder_config(folder, cls.__name__)
        # Without weights diffusers logged an error and raised 'Error no file named
        # diffusion_pytorch_model.bin found in directory ...'.
        check_vae_weights(folder, cls.__name__)
        try:
            return cls.from_pretrained(folder, **local_pretrained_kwargs(),
                                       **weights_variant(folder))
        except OSError as e:
            if 'no file named' not in str(e):
                raise
            raise no_weights_error(folder, cls.__name__) from None

    def train(self, mode=True):
        """Stay in eval mode: the VAE is frozen."""
        return super().train(False)

    # ------------------------------------------------------------------ shapes
    @property
    def latent_channels(self):
        return self.config_latent_channels(self.vae.config)

    @property
    def downsample_factor(self):
        """Spatial ratio image side / latent side (8 for SD VAEs)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def dtype(self):
        return next(self.vae.parameters()).dtype

    @property
    def device(self):
        return next(self.vae.parameters()).device

    # ------------------------------------------------------------------ helpers
    def _chunks(self, x):
        n = self.micro_batch_size or max(len(x), 1)
        return x.split(n) if len(x) else [x]

    @staticmethod
    def _fold(x):
        """(N, C, T, H, W) → (N*T, C, H, W); images pass through. Returns the unfold."""
        if x.dim() == 4:
            return x, lambda y: y
        if x.dim() != 5:
            raise ValueError(f'expected (N, C, H, W) images or (N, C, T, H, W) videos, '
                             f'got shape {tuple(x.shape)}')
        n, t = x.shape[0], x.shape[2]
        folded = x.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (N*T, C, H, W)
        return folded, lambda y: y.unflatten(0, (n, t)).permute(0, 2, 1, 3, 4)

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def encode_moments(self, images):
        """Scaled posterior mean and std of images in [-1, 1].

        Args:
            images (Tensor): (N, 3, H, W) or (N, 3, T, H, W) in [-1, 1].

        Returns:
            tuple[Tensor, Tensor]: float32 ``(mean, std)``, each (N, C, H/f, W/f) or
            (N, C, T, H/f, W/f), already shifted and scaled.
        """
        x, unfold = self._fold(images)
        means, stds = [], []
        vae = self._vae_on(images.device)
        for chunk in self._chunks(x.to(self.dtype)):
            dist = vae.encode(chunk).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        mean = (torch.cat(means) - self.shift_factor) * self.scale_factor
        std = torch.cat(stds) * self.scale_factor
        return unfold(mean), unfold(std)

    @torch.no_grad()
    def encode(self, images, generator=None):
        """Scaled posterior sample ``mean + std * eps`` of images in [-1, 1].

        The noise is drawn for the whole batch at once, so the result does not depend
        on ``micro_batch_size``.
        """
        mean, std = self.encode_moments(images)
        if generator is None:  # torch's generator, or per-sample ones in training
            eps = sample_rng.randn(mean.shape, mean.device, mean.dtype)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device,
                              dtype=mean.dtype)
        return mean + std * eps

    @torch.no_grad()
    def decode(self, latents):
        """Images in [-1, 1] (float32) from scaled latents (N, C, h, w) or (N, C, T, h, w)."""
        z, unfold = self._fold(latents)
        vae = self._vae_on(latents.device)
        z = z.to(self.dtype) / self.scale_factor + self.shift_factor
        images = [vae.decode(chunk).sample.float() for chunk in self._chunks(z)]
        return unfold(torch.cat(images).clamp(-1, 1))

"""Frozen diffusers video VAE with temporal compression (Wan, CogVideoX, LTX, Hunyuan).

SD-style VAEs encode a clip frame by frame (:class:`AutoencoderKLWrapper`); video VAEs
also compress time, causally: T frames become ``(T - 1) // r_t + 1`` latent frames
(r_t = 4 for all four families), which cuts a video DiT's tokens by another r_t.
Latents are normalised as each family's diffusers pipeline does: per channel
``(z - latents_mean) / latents_std * scaling_factor`` when the VAE has latent
statistics (Wan, LTX-Video), else ``z * scaling_factor`` (CogVideoX 1.15258426,
HunyuanVideo 0.476986).
"""
import os.path as osp

import diffusers
import torch

from mmsora.registry import MODELS
from mmsora.utils.checkpoint import read_json_config
from .autoencoder_kl import AutoencoderKLWrapper, vae_folder

__all__ = ['VideoVAEWrapper', 'VIDEO_VAE_CLASSES']

VIDEO_VAE_CLASSES = ('AutoencoderKLWan', 'AutoencoderKLCogVideoX', 'AutoencoderKLLTXVideo',
                     'AutoencoderKLHunyuanVideo')


@MODELS.register_module()
class VideoVAEWrapper(AutoencoderKLWrapper):
    """A diffusers video VAE, frozen, lazily loaded, micro-batched over clips.

    Args:
        class_name (str): One of :data:`VIDEO_VAE_CLASSES`.
        pretrained_path (str, optional): LOCAL diffusers folder (or a pipeline with
            ``vae/``); never fetched from the hub.
        subfolder (str, optional): See :class:`AutoencoderKLWrapper`.
        config (dict, optional): Constructor arguments for a random VAE (tests).
        scale_factor (float, optional): Overrides the VAE config's ``scaling_factor``
            (1 when it has none).
        micro_batch_size (int, optional): Most clips through the VAE at once.
    """

    def __init__(self, class_name='AutoencoderKLWan', pretrained_path=None, subfolder=None,
                 config=None, scale_factor=None, micro_batch_size=None):
        if class_name not in VIDEO_VAE_CLASSES:
            raise ValueError(f'video VAE class_name must be one of {VIDEO_VAE_CLASSES}, '
                             f'got {class_name!r}')
        super().__init__(pretrained_path=pretrained_path, subfolder=subfolder,
                         config=config, scale_factor=1.0, micro_batch_size=micro_batch_size)
        self.class_name = class_name
        self.scale_override = scale_factor

    def model_class(self):
        return getattr(diffusers, self.class_name)

    def config_latent_channels(self, config):
        """The latent channels a config states: Wan's ``z_dim``, the others'
        ``latent_channels``; None where it states none."""
        found = config.get('z_dim' if self.class_name == 'AutoencoderKLWan'
                           else 'latent_channels')
        return found if isinstance(found, int) and not isinstance(found, bool) else None

    @property
    def scale_factor(self):
        """The scale the latents take after the per-channel statistics: ``scale_factor``
        as given, else the VAE config's ``scaling_factor`` (1 when it has none). It said
        1.0 whatever the latents were scaled by, and extract_features.py recorded that
        in the store. Read from ``config.json`` while the VAE is not loaded."""
        if self.scale_override is not None:
            return float(self.scale_override)
        if self.__dict__['_vae'] is not None:
            config = self.vae.config
        elif self.config is not None:
            config = self.config
        else:
            config = read_json_config(osp.join(vae_folder(self.pretrained_path,
                                                           self.subfolder), 'config.json'))
            config = self.vae.config if config is None else config  # (the load says why)
        found = (config.get('scaling_factor') if isinstance(config, dict)
                 else getattr(config, 'scaling_factor', None))
        return float(found or 1.0)

    @scale_factor.setter
    def scale_factor(self, value):  # (AutoencoderKLWrapper.__init__ sets it)
        self.scale_override = value

    # ------------------------------------------------------------------ shapes
    @torch.no_grad()
    def latent_shape(self, num_frames, height, width):
        """``(C, T', h, w)`` of a clip, measured by encoding a blank one (exact for
        every family and configuration)."""
        x = torch.zeros(1, 3, num_frames, height, width, dtype=self.dtype, device=self.device)
        return tuple(self.vae.encode(x).latent_dist.mean.shape[1:])

    @torch.no_grad()
    def check_num_frames(self, num_frames: int) -> None:
        """Raise ValueError when clips of ``num_frames`` would lose their last frames:
        a causal video VAE encodes the first frame, then whole chunks of r_t frames
        (Wan: 4), and drops what does not fill one. Probed on blank clips of a few
        pixels (time does not depend on the size)."""
        side = 2 * self.downsample_factor
        counts = {}

        def latent_frames(n):
            if n not in counts:
                x = torch.zeros(1, 3, n, side, side, dtype=self.dtype, device=self.device)
                counts[n] = self.vae.encode(x).latent_dist.mean.shape[2]
            return counts[n]

        def whole(n):  # every frame of an n-frame clip reaches a latent frame
            return n == 1 or latent_frames(n) != latent_frames(n - 1)

        if num_frames < 1 or whole(num_frames):
            return
        below = next(n for n in range(num_frames - 1, 0, -1) if whole(n))
        above = next((n for n in range(num_frames + 1, num_frames + 65) if whole(n)), None)
        take = f'{below} or {above}' if above else f'{below}'
        raise ValueError(f'{num_frames} frames per clip: {self.class_name} encodes the '
                         f'first {below} into {latent_frames(num_frames)} latent frames and '
                         f'drops the rest; take {take} frames')

    @property
    def downsample_factor(self):
        cfg = self.vae.config
        if self.class_name == 'AutoencoderKLWan':
            return 2 ** (len(cfg.dim_mult) - 1)
        if getattr(cfg, 'spatial_compression_ratio', None):
            return cfg.spatial_compression_ratio
        return 2 ** (len(cfg.block_out_channels) - 1)

    # ------------------------------------------------------------------ normalisation
    def _normalisation(self, device):
        """Per-channel ``(shift, scale)`` shaped (1, C, 1, 1, 1): z' = (z - shift) * scale."""
        cfg, vae = self.vae.config, self.vae
        scaling = self.scale_factor
        mean, std = getattr(cfg, 'latents_mean', None), getattr(cfg, 'latents_std', None)
        if mean is None and isinstance(getattr(vae, 'latents_mean', None), torch.Tensor):
            mean, std = vae.latents_mean, vae.latents_std  # LTX-Video keeps buffers
        shape = (1, -1, 1, 1, 1)
        if mean is None or std is None:
            return (torch.zeros(1, 1, 1, 1, 1, device=device),
                    torch.full((1, 1, 1, 1, 1), float(scaling), device=device))
        mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(shape)
        std = torch.as_tensor(std, dtype=torch.float32, device=device).view(shape)
        return mean, scaling / std

    @staticmethod
    def _as_clips(x):
        """(N, C, H, W) pictures are one-frame clips; returns clips and the undo."""
        if x.dim() == 4:
            return x.unsqueeze(2), lambda y: y.squeeze(2)
        if x.dim() != 5:
            raise ValueError(f'expected (N, C, T, H, W) videos or (N, C, H, W) images, '
                             f'got shape {tuple(x.shape)}')
        return x, lambda y: y

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def encode_moments(self, videos):
        """Normalised posterior mean and std of clips in [-1, 1].

        Args:
            videos (Tensor): (N, 3, T, H, W) (or (N, 3, H, W) pictures).

        Returns:
            tuple[Tensor, Tensor]: float32 (N, C, T', H/f, W/f) mean and std.
        """
        x, undo = self._as_clips(videos)
        vae = self._vae_on(x.device)
        means, stds = [], []
        for chunk in self._chunks(x.to(self.dtype)):
            dist = vae.encode(chunk).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        shift, scale = self._normalisation(x.device)
        return undo((torch.cat(means) - shift) * scale), undo(torch.cat(stds) * scale)

    @torch.no_grad()
    def decode(self, latents):
        """Clips in [-1, 1] (float32) from normalised latents (N, C, T', h, w)."""
        z, undo = self._as_clips(latents)
        vae = self._vae_on(z.device)
        shift, scale = self._normalisation(z.device)
        z = (z.float() / scale + shift).to(self.dtype)
        clips = [vae.decode(chunk).sample.float() for chunk in self._chunks(z)]
        return undo(torch.cat(clips).clamp(-1, 1))

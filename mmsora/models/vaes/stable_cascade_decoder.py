"""Stable Cascade's Stage B + Stage A as a frozen decoder of Stage C latents.

Stage C diffuses in a 16 x 24 x 24 latent of a 1024 px image (the output of an
EfficientNetV2-S encoder at 768 px: 42.67x smaller per side). Decoding is itself
generative: Stage B (a ``StableCascadeUNet`` conditioned on the Stage C latent) samples
a 4 x 256 x 256 VQGAN latent in a few DDPM-Würstchen steps, and Stage A (the Paella
VQGAN) decodes it to pixels (Pernias et al., "Würstchen", ICLR 2024). This wrapper runs
diffusers' ``StableCascadeDecoderPipeline`` on the frames of a clip, micro-batched,
and gives LatentDiffusion the VAE contract (``decode``, ``scale_factor``).

Every frame starts Stage B from the same noise (one seed), so the stochastic decoder
adds no frame-to-frame flicker of its own.

Encoding images into Stage C latents needs Stage C's EfficientNetV2-S encoder, which
diffusers does not ship; ``encoder`` plugs one in (any module mapping images in [-1, 1]
to latents), and without one :meth:`encode` says so.
"""
import json
import math
import numbers
import os.path as osp
from typing import Optional, Union

import torch
import torch.nn as nn
from tqdm import tqdm

from mmsora.registry import MODELS
from mmsora.utils.checkpoint import hub_snapshot, local_pretrained_kwargs
from mmsora.utils.diffusers_weights import WEIGHT_FILES_SAID, folder_weights
from ..denoisers.stable_cascade_video import unet_smallest_side
from .autoencoder_kl import AutoencoderKLWrapper

__all__ = ['StableCascadeDecoder']


@MODELS.register_module()
class StableCascadeDecoder(nn.Module):
    """Frozen Stage B + Stage A decoding Stage C latents to frames, per frame.

    Args:
        pretrained_path (str, optional): LOCAL folder of a
            ``stabilityai/stable-cascade`` (decoder pipeline) download, holding
            ``decoder`` / ``decoder_lite``, ``vqgan`` and ``scheduler``. Never fetched.
        decoder_subfolder (str): Stage B subfolder: ``'decoder_lite'`` (700 M) or
            ``'decoder'`` (1.5 B). Defaults to 'decoder_lite'.
        config (dict, optional): ``dict(decoder=StableCascadeUNet kwargs,
            vqgan=PaellaVQModel kwargs)`` to build random models (tests) instead.
        num_steps (int): Stage B sampling steps. Defaults to 10 (the pipeline's).
        guidance_scale (float): Stage B guidance against ``decode``'s
            ``negative_pooled`` (``LatentDiffusion.sample`` gives the empty caption's,
            as the pipeline; zeros otherwise); <= 1 disables it. Defaults to 0.0 (the
            pipeline's).
        latent_dim_scale (float): Stage B latent side over Stage C latent side.
            Defaults to 10.67 (24 -> 256).
        micro_batch_size (int, optional): Most frames decoded at once; None for all.
        seed (int): Seed of Stage B's noise, the same for every frame.
        scale_factor (float): Stage C latent scale (1.0: Stage C diffuses the encoder's
            batch-normalised output as it is).
        encoder (dict | nn.Module, optional): Image -> Stage C latent encoder (a
            MODELS config, built at the first :meth:`encode` with ``seed``, or a
            module), used by :meth:`encode`.
    """

    def __init__(self, pretrained_path: Optional[str] = None,
                 decoder_subfolder: str = 'decoder_lite', config: Optional[dict] = None,
                 num_steps: int = 10, guidance_scale: float = 0.0,
                 latent_dim_scale: float = 10.67, micro_batch_size: Optional[int] = 8,
                 seed: int = 0, scale_factor: float = 1.0,
                 encoder: Union[dict, nn.Module, None] = None):
        super().__init__()
        if (pretrained_path is None) == (config is None):
            raise ValueError('give exactly one of pretrained_path (a local folder) or config')
        num_steps = self._check_sampling(num_steps, guidance_scale)
        # (0 was a ZeroDivisionError in smallest_latent_side, a negative one a negative
        # latent size, when the first clip was sampled)
        if not (isinstance(latent_dim_scale, numbers.Real) and not isinstance(
                latent_dim_scale, bool) and 0 < latent_dim_scale < math.inf):
            raise ValueError(f"Stable Cascade's Stage B (model.vae): latent_dim_scale must be "
                             "a finite number > 0 (Stage B's latent side over Stage C's; the "
                             f'released models: 10.67), got {latent_dim_scale!r}')
        self.pretrained_path = pretrained_path
        self.decoder_subfolder = decoder_subfolder
        self.config = config
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.latent_dim_scale = latent_dim_scale
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.scale_factor = float(scale_factor)
        # Frozen models are built on first use and kept out of nn.Module's registration:
        # they have no place in the trained model's state dict, optimizer or EMA copy.
        self.__dict__['_pipe'] = None
        self.__dict__['_encoder'] = encoder

    @staticmethod
    def _check_sampling(num_steps, guidance_scale) -> int:
        """Stage B's steps and guidance by sampling's own rules, in one line (a str
        ``num_steps`` was a TypeError here, 2.5 or True passed; a str
        ``guidance_scale`` failed in the pipeline after all of Stage C's steps, NaN
        or True turned guidance off without a word)."""
        from mmsora.diffusion.scheduler_sampling import check_num_steps
        from mmsora.models.latent_diffusion import check_cfg_scale
        try:
            num_steps = check_num_steps(num_steps)  # (a 0-d tensor or numpy int: an int)
        except ValueError as e:
            raise ValueError(f"Stable Cascade's Stage B (model.vae): {e}") from None
        try:  # (the pipeline's rule after that: <= 1 is no guidance, its default 0)
            check_cfg_scale(guidance_scale)
        except ValueError:
            raise ValueError(f"Stable Cascade's Stage B (model.vae): guidance_scale must be a "
                             f'finite number (<= 1: no guidance), got {guidance_scale!r}'
                             ) from None
        return num_steps

    # ------------------------------------------------------------------ loading
    @property
    def pipeline(self):
        """diffusers' decoder pipeline (no text encoder), loaded on first access."""
        if self.__dict__['_pipe'] is None:
            # Imported here: diffusers' pipelines and UNets take seconds to import.
            from diffusers import (DDPMWuerstchenScheduler, StableCascadeDecoderPipeline,
                                   StableCascadeUNet)
            try:  # newer diffusers keep Würstchen's VQGAN under pipelines/deprecated/
                from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model \
                    import PaellaVQModel
            except ImportError:
                from diffusers.pipelines.wuerstchen.modeling_paella_vq_model import \
                    PaellaVQModel
            if self.config is not None:
                decoder = StableCascadeUNet(**self.config['decoder'])
                vqgan = PaellaVQModel(**self.config['vqgan'])
                scheduler = DDPMWuerstchenScheduler()
            else:
                decoder, vqgan, scheduler = self._load(
                    self.pretrained_path, self.decoder_subfolder, StableCascadeUNet,
                    PaellaVQModel, DDPMWuerstchenScheduler)
            for model in (decoder, vqgan):
                model.requires_grad_(False)
                model.eval()
            pipe = StableCascadeDecoderPipeline(
                decoder=decoder, tokenizer=None, text_encoder=None, scheduler=scheduler,
                vqgan=vqgan, latent_dim_scale=self.latent_dim_scale)
            pipe.set_progress_bar_config(disable=True)
            self.__dict__['_pipe'] = pipe
        return self.__dict__['_pipe']

    @staticmethod
    def _load(path, subfolder, unet_cls, vqgan_cls, scheduler_cls):
        given, path = path, hub_snapshot(path)
        for sub in (subfolder, 'vqgan'):
            if not osp.isfile(osp.join(path, sub, 'config.json')):
                raise FileNotFoundError(
                    f'{osp.join(path, sub)!r} has no config.json: give a local '
                    f'stabilityai/stable-cascade folder (with {subfolder}/ and vqgan/); '
                    'nothing is downloaded')
        # both checked before either loads (Stage B is 1.5 GB), by the one rule of
        # weight files: a variant alone (fp16) is read as that variant
        found = {sub: _weights(path, sub, given, subfolder) for sub in (subfolder, 'vqgan')}

        def load(cls, sub):
            variant = found[sub].variant
            return cls.from_pretrained(path, subfolder=sub, **local_pretrained_kwargs(),
                                       **({} if variant is None else dict(variant=variant)))
        decoder, vqgan = load(unet_cls, subfolder), load(vqgan_cls, 'vqgan')
        scheduler = (scheduler_cls.from_pretrained(path, subfolder='scheduler')
                     if osp.isdir(osp.join(path, 'scheduler')) else scheduler_cls())
        return decoder, vqgan, scheduler

    def train(self, mode=True):
        """Stay in eval mode: the decoder is frozen."""
        return super().train(False)

    # ------------------------------------------------------------------ shapes
    @property
    def latent_channels(self) -> int:
        """Channels of a Stage C latent (16 for the released models)."""
        return self.pipeline.decoder.config.effnet_in_channels

    @property
    def downsample_factor(self) -> float:
        """Image side over Stage C latent side (42.67 for the released models)."""
        vq = self.pipeline.vqgan.config
        return self.latent_dim_scale * vq.up_down_scale_factor * 2 ** (vq.levels - 1)

    @property
    def smallest_latent_side(self) -> int:
        """The smallest Stage C latent side Stage B decodes: its UNet's smallest input
        side, in Stage C latent units (Stage B reads latents ``latent_dim_scale`` times
        larger), for ``set_output_size``."""
        return math.ceil(unet_smallest_side(self.pipeline.decoder.config)
                         / self.latent_dim_scale)

    def latent_size(self, height: int, width: int):
        """Stage C latent (h, w) for frames of ``height`` x ``width`` pixels.

        Stable Cascade's pipelines round up: ``ceil(side / 42.67)`` (24 for 1024); the
        decoded frames are then ``int(h * latent_dim_scale) * 4`` pixels high.
        """
        f = self.downsample_factor
        return math.ceil(height / f), math.ceil(width / f)

    def decoded_size(self, height: int, width: int):
        """(H, W) of the frames decoded for a request of ``height`` x ``width`` pixels:
        the latent side rounded up (:meth:`latent_size`), times Stage B's and Stage A's
        factors (1024 -> 1024; 33 -> 40 for the tiny decoder), for a caller that tells
        the user the size was rounded."""
        vq = self.pipeline.vqgan.config
        stage_a = vq.up_down_scale_factor * 2 ** (vq.levels - 1)
        return tuple(int(side * self.latent_dim_scale) * stage_a
                     for side in self.latent_size(height, width))

    # ------------------------------------------------------------------ checks
    @property
    def stage_b_source(self) -> str:
        """Where Stage B comes from, for messages: its folder or the config."""
        if self.pretrained_path is None:
            return 'model.vae.config'
        # (a Hugging Face cache folder at its snapshot, as the load reads it: its
        # config.json was not found, and the checks passed over it without a word)
        return osp.join(hub_snapshot(self.pretrained_path), self.decoder_subfolder)

    def _stage_b_config(self, load: bool) -> Optional[dict]:
        """Stage B's config: the loaded UNet's; else, with ``load=False``, the folder's
        ``config.json`` or the ``config`` dict as given (None where neither is there:
        the folder does not exist yet, or a key is left to diffusers' default)."""
        if load or self.__dict__['_pipe'] is not None:
            return dict(self.pipeline.decoder.config)
        if self.config is not None:
            return dict(self.config.get('decoder', {}))
        path = osp.join(self.stage_b_source, 'config.json')
        if not osp.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def check_fits(self, latent_channels: Optional[int] = None,
                   pooled_dim: Optional[int] = None, load: bool = True) -> None:
        """Refuse Stage C latents / pooled embeddings this Stage B was not built for.

        Before, a Stage B made for other latents failed only after all of Stage C's
        sampling steps, in a raw convolution error ("expected input[4, 16, 4, 4] to
        have 8 channels"); one made for other pooled embeddings went unnoticed (sampling
        gave it zeros of its own width). ``load=False`` checks only what is known
        without loading Stage B (nothing, where its folder does not exist yet).

        Raises:
            ValueError: one line naming Stage B's folder and both widths.
        """
        config = self._stage_b_config(load)
        if config is None:
            return
        source = self.stage_b_source
        channels = config.get('effnet_in_channels')
        if None not in (latent_channels, channels) and latent_channels != channels:
            raise ValueError(
                f'Stage B in {source!r} reads {channels}-channel Stage C latents but the '
                f'model\'s have {latent_channels} channels (model.latent_shape[0]): set '
                'model.vae.pretrained_path to the Stage B made for this Stage C prior')
        width = config.get('clip_text_pooled_in_channels')
        if None not in (pooled_dim, width) and pooled_dim != width:
            raise ValueError(
                f'Stage B in {source!r} takes {width}-wide pooled text embeddings but the '
                f'model\'s are {pooled_dim} wide (its text encoder\'s): set '
                'model.vae.pretrained_path to the Stage B made for this text encoder')

    def check_folder(self) -> None:
        """Refuse, without loading it, a ``pretrained_path`` folder without Stage B in
        ``decoder_subfolder`` or Stage A in ``vqgan/``, or without their weights beside
        their config.json (:func:`~mmsora.utils.diffusers_weights.folder_weights`): what
        ``tools/train.py`` checks before the run (Stage B and A load only when samples
        are decoded: a typo in ``decoder_subfolder`` trained a whole run, then stopped
        tools/infer.py; a folder without weights was named in diffusers' words at the
        first decode). A folder not there (yet) is left to the load.

        Raises:
            ValueError: one line naming the folder and the setting to change.
        """
        if self.pretrained_path is None or not osp.isdir(self.pretrained_path):
            return
        path = hub_snapshot(self.pretrained_path)

        def has(sub):
            return osp.isfile(osp.join(path, sub, 'config.json'))
        if not has(self.decoder_subfolder):
            found = [sub for sub in ('decoder_lite', 'decoder') if has(sub)]
            if found:
                raise ValueError(
                    f'{path!r} has no {self.decoder_subfolder}/config.json (model.vae.'
                    f'decoder_subfolder={self.decoder_subfolder!r}): set model.vae.'
                    f'decoder_subfolder to {" or ".join(map(repr, found))}, its Stage B')
            prior = [sub for sub in ('prior_lite', 'prior') if has(sub)]
            holds = (f'a Stage C prior ({prior[0]}/: stable-cascade-prior), not Stage B'
                     if prior else 'no Stage B (decoder_lite/ or decoder/)')
            raise ValueError(f'{path!r} holds {holds}: give a local stabilityai/stable-'
                             f'cascade folder with {self.decoder_subfolder}/ and vqgan/')
        if not has('vqgan'):
            raise ValueError(f'{path!r} has no vqgan/config.json (Stage A): give a local '
                             f'stabilityai/stable-cascade folder with '
                             f'{self.decoder_subfolder}/ and vqgan/')
        for sub in (self.decoder_subfolder, 'vqgan'):
            try:
                _weights(path, sub, self.pretrained_path, self.decoder_subfolder)
            except FileNotFoundError as e:  # (ValueError's line to tools/train.py)
                raise ValueError(str(e)) from None

    @property
    def dtype(self):
        return self.pipeline.decoder.dtype

    @property
    def device(self):
        return self.pipeline.decoder.device

    # ------------------------------------------------------------------ helpers
    # (N, C, T, H, W) -> (N*T, C, H, W) and back, as the SD-VAE wrapper folds frames.
    _fold = staticmethod(AutoencoderKLWrapper._fold)

    def _chunks(self, n):
        size = self.micro_batch_size or max(n, 1)
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, pooled: Optional[torch.Tensor] = None,
               progress: bool = True,
               negative_pooled: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Frames in [-1, 1] (float32) from Stage C latents.

        Args:
            latents (Tensor): (N, C, h, w) or (N, C, T, h, w) scaled Stage C latents.
            pooled (Tensor, optional): (N, D) pooled CLIP embeddings of the captions,
                Stage B's text input (``LatentDiffusion.sample`` passes the prompts');
                zeros when not given.
            progress (bool): Show a progress bar over micro-batches.
            negative_pooled (Tensor, optional): (N, D) or (1, D) pooled embedding of
                the negative caption for Stage B's guidance (``guidance_scale > 1``);
                the released pipeline uses CLIP's encoding of ``""``. Zeros when not
                given.

        Returns:
            Tensor: (N, 3, H, W) or (N, 3, T, H, W) with H = int(h * latent_dim_scale)
            * 4 for the released Stage A.
        """
        frames_per_sample = latents.shape[2] if latents.dim() == 5 else 1
        self.check_fits(latents.shape[1], None if pooled is None else pooled.shape[-1])
        z, unfold = self._fold(latents)
        pipe = self.pipeline.to(latents.device)
        z = z.to(self.dtype) / self.scale_factor
        pooled_dim = pipe.decoder.config.clip_text_pooled_in_channels
        pooled = self._per_frame(pooled, len(latents), frames_per_sample, z, pooled_dim)
        negative = self._per_frame(negative_pooled, len(latents), frames_per_sample, z,
                                   pooled_dim)
        chunks = self._chunks(len(z))
        images = []
        for start, stop in tqdm(chunks, desc='Stage B+A decode', disable=not progress
                                or len(chunks) < 2):
            n = stop - start
            images.append(pipe(
                image_embeddings=z[start:stop],
                prompt_embeds=z.new_zeros(n, 1, pooled_dim),  # unused by Stage B
                prompt_embeds_pooled=pooled[start:stop],
                negative_prompt_embeds_pooled=negative[start:stop],
                num_inference_steps=self.num_steps, guidance_scale=self.guidance_scale,
                # one generator per frame, all with the same seed: shared Stage B noise
                generator=[torch.Generator().manual_seed(self.seed) for _ in range(n)],
                output_type='pt').images.float())
        return unfold(torch.cat(images) * 2 - 1)              # [0, 1] -> [-1, 1]

    @staticmethod
    def _per_frame(pooled, n, frames_per_sample, z, width):
        """(N*T, 1, D) pooled embeddings, each sample's repeated over its frames; zeros
        for None; a single (1, D) row serves every sample."""
        if pooled is None:
            return z.new_zeros(n * frames_per_sample, 1, width)
        if len(pooled) not in (1, n):
            raise ValueError(f'pooled embeddings for {len(pooled)} samples but {n} latents '
                             'to decode: give one row per sample (or one for all)')
        pooled = pooled.reshape(len(pooled), 1, -1).to(z)
        if len(pooled) == 1:
            pooled = pooled.expand(n, -1, -1)
        return pooled.repeat_interleave(frames_per_sample, dim=0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled Stage C latents of images / clips in [-1, 1], through ``encoder``."""
        encoder = self.__dict__['_encoder']
        if encoder is None:
            raise NotImplementedError(
                "StableCascadeDecoder cannot encode: diffusers ships no Stage C image "
                "encoder (Stable Cascade's EfficientNetV2-S); set the wrapper's `encoder` "
                "to a module mapping images in [-1, 1] to Stage C latents")
        if isinstance(encoder, dict):
            encoder = self._build_encoder(encoder, images.device)
            self.__dict__['_encoder'] = encoder
        encoder.requires_grad_(False).eval().to(images.device)
        x, unfold = self._fold(images)
        latents = [encoder(x[a:b]).float() for a, b in self._chunks(len(x))]
        return unfold(torch.cat(latents) * self.scale_factor)

    def _build_encoder(self, cfg: dict, device) -> nn.Module:
        """The encoder of a config, built on first use (its weights stay unloaded
        until latents are encoded) from a generator of its own, seeded with ``seed``.

        Built from torch's global generator, its initialisation drew at iteration 1 of
        a run but at the first iteration after a ``--resume``: the draws of every later
        step moved, and the resumed losses were not the uninterrupted run's.
        """
        devices = [device] if torch.device(device).type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(self.seed)
            return MODELS.build(cfg)


def _weights(path: str, sub: str, given: str, decoder_subfolder: str):
    """The weights of Stage B (``sub`` is ``decoder_subfolder``) or Stage A (``sub`` is
    ``'vqgan'``) in the pipeline folder ``path`` (the user gave ``given``, a cache
    folder's for its snapshot ``path``), as
    :func:`~mmsora.utils.diffusers_weights.folder_weights` finds them (``.variant``
    for diffusers' load).

    Raises:
        FileNotFoundError: one line naming the folder, the weight files looked for and
            the ``model.vae`` keys to set (a shard its index lists is missing, too).
        ValueError: its shard index is damaged.
    """
    folder = osp.join(path, sub)
    key = f'model.vae.pretrained_path={given}' + (
        '' if sub == 'vqgan' else f' model.vae.decoder_subfolder={decoder_subfolder}')
    try:  # (shards count with their index and every shard it lists)
        found = folder_weights(folder)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f'{e} ({key})') from None
    if found is None:
        stage = 'Stage A' if sub == 'vqgan' else 'Stage B'
        raise FileNotFoundError(
            f'{stage} folder {folder!r} has config.json but no weights file '
            f'({WEIGHT_FILES_SAID}): copy the weights in beside it, or give the '
            f'stabilityai/stable-cascade folder that holds them ({key})')
    return found

"""LatentDiffusion: a denoiser, a diffusion objective and an optional VAE, trained
and sampled through mmengine (after DiT's ``train.py`` and ``sample.py``,
Peebles & Xie 2023).
"""
import inspect
from typing import Dict, Optional, Sequence, Union

import torch
from mmengine.model import BaseModel
from tqdm import tqdm

from mmsora.registry import DIFFUSION, MODELS, NOISE_SCHEDULERS

__all__ = ['LatentDiffusion']

GAUSSIAN_SAMPLERS = ('ddpm', 'ddim')


@MODELS.register_module()
class LatentDiffusion(BaseModel):
    """Latent diffusion model: ``loss`` for training, ``sample`` for generation.

    Args:
        denoiser: Config of the denoiser (e.g. ``dict(type='DiT', ...)``); it is
            called as ``denoiser(x, t, y)`` and, for guidance,
            ``denoiser.forward_with_cfg(x, t, y, cfg_scale)``.
        diffusion: Config of the training objective in the ``DIFFUSION`` registry.
        vae: Optional config of a VAE wrapper (``encode``/``decode`` and a
            ``scale_factor``). With one, a batch's ``images`` are encoded to latents.
            Without one the model diffuses in pixel space: a batch's ``images``
            (in [-1, 1]) *are* its latents, and samples are returned as they are.
        latent_shape: Shape of one latent, ``(C, H, W)`` (or ``(C, T, H, W)``);
            used by :meth:`sample` when no noise is given.
        num_classes: Number of classes; the null (unconditional) label is
            ``num_classes``, as in DiT. ``num_classes=1`` is an unconditional model:
            its batches may come without labels (video datasets give label -1 to
            rows without one), and label -1 is read as class 0.
        pretrained_denoiser: Optional original DiT / fast-DiT checkpoint file loaded
            into the denoiser (``strict=True``) by ``init_weights``, i.e. when a run
            starts; ``tools/train.py --load-from`` sets it for such files. A denoiser
            with a ``load_image_dit`` method (VideoDiT) inflates the image DiT instead.
        data_preprocessor: mmengine data preprocessor config.
        init_cfg: mmengine init config.
    """

    def __init__(self,
                 denoiser: dict,
                 diffusion: dict = dict(type='GaussianDiffusion'),
                 vae: Optional[dict] = None,
                 latent_shape: Sequence[int] = (4, 32, 32),
                 num_classes: int = 1000,
                 pretrained_denoiser: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.denoiser = MODELS.build(denoiser)
        self.diffusion = DIFFUSION.build(diffusion)
        self.vae = MODELS.build(vae) if vae is not None else None
        self.latent_shape = tuple(latent_shape)
        self.num_classes = num_classes
        self.pretrained_denoiser = pretrained_denoiser

    def init_weights(self):
        """Denoisers initialise themselves; then load ``pretrained_denoiser`` if set."""
        super().init_weights()
        if not self.pretrained_denoiser:
            return
        from mmsora.utils.checkpoint import load_checkpoint_file, load_dit_checkpoint
        path = self.pretrained_denoiser
        # An mmsora (mmengine) run keeps the denoiser's weights under 'denoiser.'.
        obj = load_checkpoint_file(path)
        prefix = 'denoiser.' if isinstance(obj, dict) and 'state_dict' in obj else None
        del obj
        if hasattr(self.denoiser, 'load_image_dit'):  # VideoDiT: inflate, strictly
            self.denoiser.load_image_dit(path, prefix=prefix)
        else:
            load_dit_checkpoint(self.denoiser, path, prefix=prefix)

    # ------------------------------------------------------------------ #
    #                               Training                             #
    # ------------------------------------------------------------------ #
    def forward(self,
                latents: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                images: Optional[torch.Tensor] = None,
                caption: Optional[Sequence[str]] = None,
                mode: str = 'loss'):
        """mmengine entry point: ``mode='loss'`` returns the loss dict.

        ``mode='predict'`` samples one latent per label with the default sampler.
        ``caption`` (video datasets carry it as metadata) is not used by
        class-conditional denoisers.
        """
        if mode == 'loss':
            return self.loss(latents=latents, labels=labels, images=images)
        if mode == 'predict':
            return self.sample(labels)
        raise ValueError(f"mode must be 'loss' or 'predict', got {mode!r}")

    def loss(self,
             latents: Optional[torch.Tensor] = None,
             labels: Optional[torch.Tensor] = None,
             images: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """One DiT training step's loss: latents -> t -> noise -> predict -> loss."""
        x = self._latents_from(latents, images)               # (N, C, [T,] H, W)
        self._check_latent_shape(x)
        labels = self._unconditional_labels(labels, x)
        self._check_labels(labels)
        t = torch.randint(0, self.diffusion.num_timesteps, (x.shape[0],), device=x.device)
        terms = self.diffusion.training_losses(self.denoiser, x, t, model_kwargs=dict(y=labels))
        # Only keys containing 'loss' are summed by mmengine; the rest are logged.
        out = dict(loss=terms['loss'].mean())
        for key in ('mse', 'vb'):
            if key in terms:
                out[key] = terms[key].detach().mean()
        return out

    def _latents_from(self, latents, images):
        if latents is not None:
            return latents
        if images is None:
            raise ValueError('LatentDiffusion.loss needs `latents` or `images` in the batch')
        if self.vae is None:  # pixel space: the pictures / clips are the latents
            return images
        with torch.no_grad():
            return self.vae.encode(images)

    def _check_latent_shape(self, x):
        if tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(
                f'latents of shape {tuple(x.shape[1:])} do not fit the config '
                f'(model.latent_shape={self.latent_shape}); check the dataset '
                'or the model size in the config')

    def _unconditional_labels(self, labels, x):
        """A one-class model is unconditional: no label or -1 ("none") means class 0."""
        if self.num_classes != 1:
            return labels
        if labels is None:
            return torch.zeros(len(x), dtype=torch.long, device=x.device)
        return labels.clamp(min=0)

    def _check_labels(self, labels):
        if labels is None:
            raise ValueError('the batch has no `labels`; class-conditional models need them')
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            hint = (' (label -1 marks a manifest row without a label: add a label column, '
                    'or set model.num_classes=1 for an unconditional model)'
                    if int(labels.min()) == -1 else '')
            raise ValueError(
                f'labels must lie in [0, {self.num_classes}); got min {int(labels.min())} '
                f'max {int(labels.max())} (model.num_classes={self.num_classes}){hint}')

    # ------------------------------------------------------------------ #
    #                               Sampling                             #
    # ------------------------------------------------------------------ #
    @torch.no_grad()
    def sample(self,
               labels: Union[torch.Tensor, Sequence[int]],
               sampler: str = 'ddpm',
               num_steps: int = 250,
               cfg_scale: float = 1.0,
               eta: float = 0.0,
               seeds: Optional[Sequence[int]] = None,
               noise: Optional[torch.Tensor] = None,
               decode: bool = True,
               progress: bool = False,
               guidance_channels: Optional[int] = None) -> torch.Tensor:
        """Generate one sample per label (DiT's ``sample.py``).

        Args:
            labels: Class ids, shape (N,).
            sampler: ``'ddpm'`` or ``'ddim'`` (DiT's own, respaced to
                ``num_steps``) or the name of a diffusers scheduler registered in
                ``NOISE_SCHEDULERS`` (e.g. ``'DPMSolverMultistepScheduler'``).
            num_steps: Number of sampling steps.
            cfg_scale: Classifier-free guidance scale; 1 disables guidance.
            eta: DDIM's eta.
            seeds: One seed per sample: sample i's noise (start and stochastic
                steps) depends on its seed only, not on the batch it is drawn in.
            noise: Starting noise (N, *latent_shape); overrides ``seeds``.
            decode: Decode through the VAE when the model has one.
            progress: Show a progress bar over sampling steps.
            guidance_channels: Channels guided by CFG; default is the denoiser's.

        Returns:
            Decoded images in [-1, 1] (N, 3, H, W) with a VAE, else latents.
        """
        device = next(self.denoiser.parameters()).device
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        self._check_labels(labels)
        if seeds is not None and len(seeds) != len(labels):
            raise ValueError(f'got {len(seeds)} seeds for {len(labels)} samples')
        # One generator per sample: its starting noise and every step's noise depend
        # on its seed only, so a sample does not change with the batch it is in.
        generators = ([torch.Generator().manual_seed(int(s)) for s in seeds]
                      if seeds is not None else None)
        if noise is None:
            noise = self._initial_noise(len(labels), generators, device)
        model_fn, x, kwargs = self.denoiser, noise, dict(y=labels)
        use_cfg = cfg_scale != 1.0
        if use_cfg:
            # The guided batch is doubled; its second half's noise is never used.
            generators = generators + generators if generators is not None else None
            # DiT's sample.py: conditional half then the null label; the denoiser
            # combines both halves and returns the guided output twice.
            x = torch.cat([noise, noise])
            null = torch.full_like(labels, self.num_classes)
            kwargs = dict(y=torch.cat([labels, null]), cfg_scale=cfg_scale)
            if guidance_channels is not None:
                kwargs['guidance_channels'] = guidance_channels
            model_fn = self.denoiser.forward_with_cfg
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            z = self._run_sampler(model_fn, x, kwargs, sampler, num_steps, eta,
                                  generators, progress)
        finally:
            self.denoiser.train(was_training)
        if use_cfg:
            z = z[:len(labels)]
        if decode and self.vae is not None:
            return self.vae.decode(z)
        return z

    def _initial_noise(self, n, generators, device):
        if generators is None:
            return torch.randn(n, *self.latent_shape, device=device)
        return torch.stack([torch.randn(self.latent_shape, generator=g)
                            for g in generators]).to(device)

    def _run_sampler(self, model_fn, x, kwargs, sampler, num_steps, eta, generators,
                     progress):
        if num_steps < 1:
            raise ValueError(f'num_steps must be >= 1, got {num_steps}')
        if sampler in GAUSSIAN_SAMPLERS:
            spacing = f'ddim{num_steps}' if sampler == 'ddim' else str(num_steps)
            diffusion = self.diffusion.respace(spacing)
            if sampler == 'ddim':
                return diffusion.ddim_sample_loop(
                    model_fn, x.shape, noise=x, model_kwargs=kwargs, eta=eta,
                    progress=progress, generator=generators)
            return diffusion.p_sample_loop(
                model_fn, x.shape, noise=x, model_kwargs=kwargs, progress=progress,
                generator=generators)
        return self._scheduler_loop(model_fn, x, kwargs, sampler, num_steps, generators,
                                    progress)

    def _scheduler_overrides(self, sampler):
        """Give a diffusers scheduler the objective's own betas (linear, cosine, ...)."""
        overrides = dict(num_train_timesteps=self.diffusion.num_timesteps)
        accepted = inspect.signature(NOISE_SCHEDULERS.get(sampler).__init__).parameters
        if 'trained_betas' in accepted:
            overrides['trained_betas'] = self.diffusion.betas
        return overrides

    def _scheduler_loop(self, model_fn, x, kwargs, sampler, num_steps, generators, progress):
        """Sample with a diffusers scheduler (DPM-Solver++, Euler, UniPC, ...).

        diffusers takes a list of generators, one per sample, like our own samplers.
        """
        from mmsora.diffusion import build_noise_scheduler
        if sampler not in NOISE_SCHEDULERS.module_dict:
            names = list(GAUSSIAN_SAMPLERS) + sorted(NOISE_SCHEDULERS.module_dict)
            raise ValueError(f'unknown sampler {sampler!r}; choose one of {names}')
        scheduler = build_noise_scheduler(sampler, **self._scheduler_overrides(sampler))
        scheduler.set_timesteps(num_steps, device=x.device)
        x = x * scheduler.init_noise_sigma
        channels = x.shape[1]
        # Stochastic schedulers take a generator; deterministic ones have no such argument.
        step_kwargs = ({'generator': generators}
                       if 'generator' in inspect.signature(scheduler.step).parameters else {})
        for t in tqdm(scheduler.timesteps, desc=sampler, disable=not progress):
            model_in = scheduler.scale_model_input(x, t)
            t_batch = torch.full((x.shape[0],), float(t), device=x.device)
            # Learned-sigma models output (eps, variance); schedulers take eps.
            eps = model_fn(model_in, t_batch, **kwargs)[:, :channels]
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        return x

"""Würstchen's continuous-time diffusion: the objective Stable Cascade's Stage C trains with.

Pernias et al., "Würstchen: An Efficient Architecture for Large-Scale Text-to-Image
Diffusion Models" (ICLR 2024), after Nichol & Dhariwal 2021's cosine schedule in
continuous time: t ~ U(0, 1), ``alpha_bar(t) = cos²((t + s) / (1 + s) · π/2) /
cos²(s / (1 + s) · π/2)`` clamped to [1e-4, 0.9999], ``x_t = sqrt(alpha_bar) x0 +
sqrt(1 - alpha_bar) eps``; the model sees the timestep *ratio* t itself and predicts
eps. Sampling is diffusers' ``DDPMWuerstchenScheduler`` (same ``s`` and ``scaler``) on
the uniform grid 1 -> 0, stepped as ``StableCascadePriorPipeline`` steps it.
"""
import numbers
from typing import Callable, Optional, Sequence

import torch
from diffusers import DDPMWuerstchenScheduler
from tqdm import tqdm

from mmsora.registry import DIFFUSION
from mmsora.utils import sample_rng
from mmsora.utils.trained_settings import keyword_defaults
from .gaussian import check_model_output
from .scheduler_sampling import (CountingModel, check_num_steps, check_sampler_name,
                                 check_sampler_options)

__all__ = ['WuerstchenDiffusion']


@DIFFUSION.register_module()
class WuerstchenDiffusion:
    """Stage C's noise schedule, epsilon loss and DDPM-Würstchen sampler.

    Args:
        s (float): Offset of the cosine schedule. Defaults to 0.008.
        scaler (float): Time warp of diffusers' scheduler (``t -> 1 - (1 - t)^scaler``
            above 1, ``t^scaler`` below); 1 is Stage C's. Defaults to 1.0.
        loss_weight (str): ``'none'`` (plain epsilon MSE, as diffusers' Würstchen
            training script) or ``'p2'`` (``1 / (1 + SNR)``, the P2 weight of the
            Würstchen code, ``P2LossWeight(k=1, gamma=1, s=1)``). Defaults to 'none'.
    """

    SAMPLER_OPTIONS = {'DDPMWuerstchenScheduler': ('timesteps',)}

    def __init__(self, s: float = 0.008, scaler: float = 1.0, loss_weight: str = 'none'):
        if loss_weight not in ('none', 'p2'):
            raise ValueError(f"loss_weight must be 'none' or 'p2', got {loss_weight!r}")
        self.s = float(s)
        self.scaler = float(scaler)
        self.loss_weight = loss_weight

    def samplers(self):
        """Sampler names :meth:`sample` accepts."""
        return list(self.SAMPLER_OPTIONS)

    def scheduler(self) -> DDPMWuerstchenScheduler:
        """diffusers' scheduler with this schedule."""
        return DDPMWuerstchenScheduler(scaler=self.scaler, s=self.s)

    # ------------------------------------------------------------------ schedule
    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar(t) for timestep ratios t in [0, 1] (1 is pure noise)."""
        if self.scaler > 1:
            t = 1 - (1 - t) ** self.scaler
        elif self.scaler < 1:
            t = t ** self.scaler
        s = torch.tensor(self.s, device=t.device)
        init = torch.cos(s / (1 + s) * torch.pi * 0.5) ** 2
        ab = torch.cos((t.float() + s) / (1 + s) * torch.pi * 0.5) ** 2 / init
        return ab.clamp(0.0001, 0.9999).to(t.dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noised latents ``sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise``."""
        ab = self.alpha_bar(t).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    @staticmethod
    def _check_output(model, out, x):
        """One ValueError line for a predicted eps not shaped like ``x``."""
        return check_model_output(model, out, x, (x.shape[1], ),
                                  f'WuerstchenDiffusion expects {x.shape[1]} channels (the noise)')

    # ------------------------------------------------------------------ training
    def loss(self, model: Callable, x0: torch.Tensor,
             model_kwargs: Optional[dict] = None) -> dict:
        """One training step: t ~ U(0, 1), noise, predict eps, (weighted) MSE.

        Returns:
            dict: ``loss`` (N,) and the unweighted ``mse`` (N,).
        """
        t = sample_rng.rand(x0.shape[0], x0.device)
        noise = sample_rng.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        # (a wrong shape broadcast against the noise, or met an AttributeError)
        pred = self._check_output(model, model(x_t, t, **(model_kwargs or {})), x_t)
        mse = ((pred.float() - noise.float()) ** 2).mean(dim=list(range(1, x0.dim())))
        if self.loss_weight == 'p2':
            ab = self.alpha_bar(t).float()
            weight = 1.0 / (1.0 + ab / (1 - ab))  # 1 / (1 + SNR)
            return dict(loss=mse * weight, mse=mse)
        return dict(loss=mse, mse=mse)

    # ------------------------------------------------------------------ sampling
    def check_sample_options(self, sampler, num_steps=None, **options):
        """``sampler``, ``num_steps`` and the sampler's options as :meth:`sample` takes
        them, checked before any model call (and, through ``check_sample_settings``, by
        tools/infer.py and tools/test.py before the weights load and by tools/train.py
        in ``sample_cfg``). ``num_steps`` None: :meth:`sample`'s default; a custom
        ``timesteps`` grid replaces it."""
        check_sampler_name(sampler, self.samplers(), 'WuerstchenDiffusion')
        check_sampler_options(sampler, options, self.SAMPLER_OPTIONS[sampler])
        if options.get('timesteps') is not None:
            _check_timesteps(options['timesteps'])
            return None
        if num_steps is None:
            num_steps = keyword_defaults(self.sample)['num_steps']
        return check_num_steps(num_steps)

    @torch.no_grad()
    def sample(self, model_fn: Callable, noise: torch.Tensor, model_kwargs: Optional[dict],
               sampler: str = 'DDPMWuerstchenScheduler', num_steps: int = 20,
               generators: Optional[Sequence[torch.Generator]] = None,
               progress: bool = False, **sampler_kwargs) -> torch.Tensor:
        """Denoise ``noise`` with ``DDPMWuerstchenScheduler``, as Stage C's pipeline does.

        Args:
            model_fn: ``model_fn(x, t, **model_kwargs)`` -> predicted eps.
            noise (Tensor): (N, C, ...) starting noise.
            model_kwargs (dict, optional): Condition passed to ``model_fn``.
            sampler (str): ``'DDPMWuerstchenScheduler'``.
            num_steps (int): Steps on the uniform grid from 1 to 0.
            generators (list, optional): One generator per sample for the noise of the
                stochastic steps.
            progress (bool): Show a progress bar.
            **sampler_kwargs: ``timesteps``, a custom decreasing grid ending at 0
                (e.g. Stage C's default 20 steps in [1, 2/3] and 10 below); it
                overrides ``num_steps``.

        Returns:
            Tensor: The sample x0, shape of ``noise``. ``self.last_nfe`` holds the
            number of model evaluations it took.
        """
        num_steps = self.check_sample_options(sampler, num_steps, **sampler_kwargs)
        timesteps = sampler_kwargs.get('timesteps')
        scheduler = self.scheduler()
        scheduler.set_timesteps(None if timesteps is not None else num_steps,
                                timesteps=timesteps, device=noise.device)
        x = noise * scheduler.init_noise_sigma
        kwargs = model_kwargs or {}
        model_fn = CountingModel(model_fn)
        # The last grid point (0) is only the target of the final step.
        for t in tqdm(scheduler.timesteps[:-1], desc=sampler, disable=not progress):
            r = t.expand(x.shape[0]).to(x.dtype)
            eps = self._check_output(model_fn, model_fn(x, r, **kwargs), x)
            x = scheduler.step(eps, r, x, generator=generators).prev_sample
        self.last_nfe = model_fn.nfe
        return x


def _check_timesteps(timesteps):
    """A custom grid names its fault: not a list of numbers (a word or one number from
    --sampler-options was a TypeError or float()'s message), too short, not ending at 0
    (the last value is only the target of the final step), not decreasing, or outside
    [0, 1]."""
    if hasattr(timesteps, 'tolist'):  # a tensor or an array
        timesteps = timesteps.tolist()
    if not (isinstance(timesteps, (list, tuple)) and all(
            isinstance(t, numbers.Real) and not isinstance(t, bool) for t in timesteps)):
        raise ValueError(f'timesteps={timesteps!r}: give a list of numbers decreasing to 0 '
                         '(e.g. [1.0, 0.5, 0.0]; 1 is pure noise)')
    values = [float(t) for t in timesteps]
    given = f'timesteps={values}'
    if len(values) < 2:
        raise ValueError(f'{given}: give at least two values, decreasing to 0 '
                         '(e.g. [1.0, 0.5, 0.0])')
    if values[-1] != 0.0:
        raise ValueError(f'{given}: the grid must end at 0 (the target of the last step); '
                         f'e.g. {values + [0.0]}')
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f'{given}: the values must decrease to 0')
    if values[0] > 1.0:
        raise ValueError(f'{given}: the values lie in [0, 1] (1 is pure noise)')


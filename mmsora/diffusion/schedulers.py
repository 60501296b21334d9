"""Fast samplers: diffusers' noise schedulers, registered by name.

mmsora does not reimplement samplers: DDPM (Ho et al. 2020), DDIM (Song et al. 2021),
DPM-Solver++ (Lu et al. 2022), Euler / Euler-ancestral (Karras et al. 2022), UniPC
(Zhao et al. 2023) and flow-matching Euler (Lipman et al. 2023, Esser et al. 2024) come
from diffusers and keep its contract (``set_timesteps``, ``timesteps``, ``step``,
``add_noise``). The sampling loop lives with the objectives
(``scheduler_sampling.scheduler_sample_loop``, called by ``GaussianDiffusion.sample``
and, for flow matching, ``Transport.sample``) and classifier-free guidance in the
model (``LatentDiffusion.sample``), not here.

DiT models trained with ``learn_sigma=True`` output ``2C`` channels: epsilon (or x0)
first, then the variance interpolation value. Schedulers other than ``DDPMScheduler(
variance_type='learned_range')`` expect the prediction only, so the caller passes
``model_output[:, :C]`` (``torch.split(out, C, dim=1)[0]``) to ``step``.

The schedulers are built to take epsilon (``prediction_type='epsilon'``) whatever the
model predicts: ``GaussianDiffusion(predict_xstart=True)`` turns its model's x0 into
epsilon at the scheduler's own noise level before ``step``
(``scheduler_sampling.epsilon_from_x0``). One rule for all of them:
Euler-ancestral has no ``prediction_type='sample'``.
"""
import inspect

from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler)

from mmsora.registry import NOISE_SCHEDULERS

__all__ = ['dit_scheduler_config', 'build_noise_scheduler', 'scheduler_settings',
           'ddpm_variance_type']

# --------------------------------------------------------------------------- #
#                                 Registration                                 #
# --------------------------------------------------------------------------- #
NOISE_SCHEDULERS.register_module(name='DDPMScheduler', module=DDPMScheduler)
NOISE_SCHEDULERS.register_module(name='DDIMScheduler', module=DDIMScheduler)
NOISE_SCHEDULERS.register_module(
    name='DPMSolverMultistepScheduler', module=DPMSolverMultistepScheduler)
NOISE_SCHEDULERS.register_module(name='EulerDiscreteScheduler', module=EulerDiscreteScheduler)
NOISE_SCHEDULERS.register_module(
    name='EulerAncestralDiscreteScheduler', module=EulerAncestralDiscreteScheduler)
NOISE_SCHEDULERS.register_module(name='UniPCMultistepScheduler', module=UniPCMultistepScheduler)
NOISE_SCHEDULERS.register_module(
    name='FlowMatchEulerDiscreteScheduler', module=FlowMatchEulerDiscreteScheduler)


# --------------------------------------------------------------------------- #
#                             DiT's training schedule                          #
# --------------------------------------------------------------------------- #
def dit_scheduler_config(num_train_timesteps=1000, scheduler=None):
    """Scheduler kwargs that reproduce DiT's training noise schedule.

    DiT trains with the linear schedule 1e-4..0.02 at 1000 steps, rescaled by
    ``1000 / num_train_timesteps`` for other step counts (as
    :func:`mmsora.diffusion.gaussian.get_named_beta_schedule`), and predicts epsilon
    (an x0-predicting objective converts its model's output to epsilon before ``step``).
    Its latents are unbounded, so x0 is never clipped. ``set_alpha_to_one=True`` makes
    DDIM's last step go to alpha_bar = 1, as DiT's ``ddim_sample`` does.

    Args:
        num_train_timesteps (int): Steps of the training process. Defaults to 1000.
        scheduler (str | type, optional): A scheduler (class or registered name). If
            given, only the keys its constructor accepts are returned (e.g.
            ``FlowMatchEulerDiscreteScheduler`` has no betas and keeps only
            ``num_train_timesteps``).

    Returns:
        dict: Constructor kwargs.
    """
    scale = 1000 / num_train_timesteps
    cfg = dict(
        num_train_timesteps=num_train_timesteps,
        beta_start=scale * 0.0001,
        beta_end=scale * 0.02,
        beta_schedule='linear',
        prediction_type='epsilon',
        clip_sample=False,
        set_alpha_to_one=True,
        thresholding=False)
    if scheduler is None:
        return cfg
    accepted = scheduler_settings(scheduler)
    return {k: v for k, v in cfg.items() if k in accepted}


def ddpm_variance_type(sigma_small=False, learn_sigma=False):
    """``DDPMScheduler``'s ``variance_type`` for a :class:`GaussianDiffusion`'s variance
    (its ``sigma_small`` and ``learn_sigma``): ``'fixed_small'``, the posterior variance,
    or ``'fixed_large'``, beta, as its ``model_var_type`` names them (IDDPM's names and
    diffusers' are the same). A learned variance gets ``'fixed_small'``: the sampling loop
    hands the scheduler epsilon alone (the variance channels dropped), so the learned
    interpolation between the two is not there to take; the posterior's, the lower end
    of that range, is diffusers' default.

    Args:
        sigma_small (bool): The objective's fixed variance is the posterior's.
        learn_sigma (bool): The objective learns its variance.

    Returns:
        str: ``'fixed_small'`` or ``'fixed_large'``.
    """
    return 'fixed_small' if sigma_small or learn_sigma else 'fixed_large'


def build_noise_scheduler(cfg_or_name, **overrides):
    """Build a registered scheduler.

    Args:
        cfg_or_name (str | dict): A registered name, which starts from DiT's training
            schedule (:func:`dit_scheduler_config`; a ``num_train_timesteps`` override
            rescales its betas as DiT does), or a config dict ``dict(type=...,
            **kwargs)``, taken as written.
        **overrides: Constructor kwargs that replace those of the name or config.

    Returns:
        diffusers.SchedulerMixin: The scheduler.

    Example:
        >>> sched = build_noise_scheduler('DPMSolverMultistepScheduler')
        >>> sched.set_timesteps(25)
    """
    if isinstance(cfg_or_name, str):
        num_train_timesteps = overrides.pop('num_train_timesteps', 1000)
        cfg = dict(type=cfg_or_name,
                   **dit_scheduler_config(num_train_timesteps, scheduler=cfg_or_name))
    else:
        cfg = dict(cfg_or_name)
    cfg.update(overrides)
    return NOISE_SCHEDULERS.build(cfg)


def scheduler_settings(scheduler):
    """The settings a scheduler's constructor takes by keyword (its ``from_config``
    kwargs: ``solver_order``, ``timestep_spacing``, ...) and their defaults, in its
    signature's order.

    Args:
        scheduler (str | type): A scheduler (class or registered name).

    Returns:
        dict: Keyword name -> default.
    """
    if isinstance(scheduler, str):
        scheduler = NOISE_SCHEDULERS.get(scheduler)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p.default
            for name, p in inspect.signature(scheduler.__init__).parameters.items()
            if name != 'self' and p.kind in kinds}

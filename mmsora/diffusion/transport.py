"""Interpolant transport: SiT's objectives and samplers, and rectified flow.

Implements the stochastic-interpolant framework of Albergo & Vanden-Eijnden 2023
("Building Normalizing Flows with Stochastic Interpolants") as SiT trains and samples
it (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative Models with
Scalable Interpolant Transformers"; willisma/SiT ``transport/``), following its
conventions exactly:

    x_t = alpha_t * data + sigma_t * noise,   t in [0, 1],  noise ~ N(0, I),

so t = 0 is pure noise and t = 1 is data (the reverse of DiT's timesteps). The Linear
path with velocity prediction is rectified flow (Liu et al. 2023; Lipman et al. 2023),
which SD3 (Esser et al. 2024) trains with logit-normal times.

``Transport`` is an objective of the ``DIFFUSION`` registry: ``loss`` draws t and the
noise and returns per-sample losses; ``sample`` integrates the probability-flow ODE or
SiT's reverse SDE from noise to data; ``log_likelihood`` integrates the ODE backwards
with a Hutchinson divergence estimate.
"""
import math
import numbers
from typing import Optional

import torch

from mmsora.registry import DIFFUSION
from mmsora.utils import sample_rng
from mmsora.utils.trained_settings import keyword_defaults
from .gaussian import check_model_output, mean_flat
from .scheduler_sampling import (CountingModel, check_num_steps, check_sampler_name,
                                 check_sampler_options, check_scheduler_options,
                                 scheduler_option_values, scheduler_sample_loop)
from .schedulers import build_noise_scheduler, scheduler_settings
from .transport_samplers import ode_adaptive, ode_fixed_step, sde_fixed_step, shift_times

__all__ = ['Transport', 'LinearPath', 'GVPPath', 'VPPath', 'PATHS', 'open_sora_time_shift']


def _expand(t, x):
    """(N,) -> (N, 1, ..., 1) broadcastable against ``x``."""
    return t.view(-1, *([1] * (x.ndim - 1)))


# --------------------------------------------------------------------------- #
#                                     Paths                                    #
# --------------------------------------------------------------------------- #
class LinearPath:
    """alpha_t = t, sigma_t = 1 - t (SiT's ``ICPlan``; rectified flow)."""

    def alpha(self, t):
        """(alpha_t, d alpha_t / dt)."""
        return t, torch.ones_like(t)

    def sigma(self, t):
        """(sigma_t, d sigma_t / dt)."""
        return 1 - t, -torch.ones_like(t)

    def d_alpha_alpha_ratio(self, t):
        """d alpha_t / alpha_t."""
        return 1 / t

    def drift_terms(self, x, t):
        """(drift_mean, drift_var): the ODE velocity is -drift_mean + drift_var * score.

        With a = d alpha / alpha: drift_mean = -a x, drift_var = a sigma^2 - sigma
        d sigma (the score parametrisation of SiT's ``compute_drift``).
        """
        t = _expand(t, x)
        ratio = self.d_alpha_alpha_ratio(t)
        sigma_t, d_sigma_t = self.sigma(t)
        return -ratio * x, ratio * sigma_t**2 - sigma_t * d_sigma_t

    def diffusion(self, x, t, form='SBDM', norm=1.0):
        """SiT's SDE diffusion coefficients w_t (the noise term is sqrt(2 w_t) dW)."""
        t = _expand(t, x)
        if form == 'constant':
            return torch.full_like(t, norm)
        if form == 'SBDM':
            return norm * self.drift_terms(x, t.view(-1))[1]
        if form == 'sigma':
            return norm * self.sigma(t)[0]
        if form == 'linear':
            return norm * (1 - t)
        if form == 'decreasing':
            return 0.25 * (norm * torch.cos(math.pi * t) + 1)**2
        if form == 'increasing-decreasing':
            return norm * torch.sin(math.pi * t)**2
        raise ValueError(f'unknown diffusion_form {form!r}; choose one of {DIFFUSION_FORMS}')

    def score_from_velocity(self, velocity, x, t):
        """The score of p_t implied by a velocity prediction."""
        t = _expand(t, x)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        reverse_ratio = alpha_t / d_alpha_t
        var = sigma_t**2 - reverse_ratio * d_sigma_t * sigma_t
        return (reverse_ratio * velocity - x) / var

    def interpolate(self, t, noise, data):
        """(x_t, u_t): the interpolant and its time derivative (the velocity target)."""
        t = _expand(t, data)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        return alpha_t * data + sigma_t * noise, d_alpha_t * data + d_sigma_t * noise


class GVPPath(LinearPath):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2): variance preserving
    (SiT's ``GVPCPlan``)."""

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def d_alpha_alpha_ratio(self, t):
        return math.pi / (2 * torch.tan(t * math.pi / 2))


class VPPath(LinearPath):
    """The VP SDE of Song et al. 2021 with linear beta from ``sigma_max`` (t = 0) to
    ``sigma_min`` (t = 1), in SiT's time (SiT's ``VPCPlan``)."""

    def __init__(self, sigma_min=0.1, sigma_max=20.0):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def log_mean_coeff(self, t):
        return -0.25 * (1 - t)**2 * (self.sigma_max - self.sigma_min) - 0.5 * (
            1 - t) * self.sigma_min

    def d_log_mean_coeff(self, t):
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def alpha(self, t):
        alpha_t = torch.exp(self.log_mean_coeff(t))
        return alpha_t, alpha_t * self.d_log_mean_coeff(t)

    def sigma(self, t):
        p_sigma_t = 2 * self.log_mean_coeff(t)
        sigma_t = torch.sqrt(1 - torch.exp(p_sigma_t))
        d_sigma_t = torch.exp(p_sigma_t) * (2 * self.d_log_mean_coeff(t)) / (-2 * sigma_t)
        return sigma_t, d_sigma_t

    def d_alpha_alpha_ratio(self, t):
        return self.d_log_mean_coeff(t)

    def drift_terms(self, x, t):
        # The closed form -beta_t x / 2, beta_t / 2 is stable where sigma_t -> 0.
        beta_t = self.sigma_min + (1 - _expand(t, x)) * (self.sigma_max - self.sigma_min)
        return -0.5 * beta_t * x, beta_t / 2


PATHS = {'Linear': LinearPath, 'GVP': GVPPath, 'VP': VPPath}
PREDICTIONS = ('velocity', 'score', 'noise')
LOSS_WEIGHTS = (None, 'velocity', 'likelihood')
DIFFUSION_FORMS = ('constant', 'SBDM', 'sigma', 'linear', 'decreasing',
                   'increasing-decreasing')
LAST_STEPS = (None, 'Mean', 'Tweedie', 'Euler')
SDE_OPTIONS = ('diffusion_form', 'diffusion_norm', 'last_step', 'last_step_size')
FLOW_MATCH_FIXED = ('invert_sigmas',)


# --------------------------------------------------------------------------- #
#                                   Transport                                  #
# --------------------------------------------------------------------------- #
@DIFFUSION.register_module()
class Transport:
    """SiT's interpolant transport as an mmsora objective (``loss`` / ``sample``).

    Args:
        path (str): ``'Linear'`` (rectified flow), ``'GVP'`` or ``'VP'``.
        prediction (str): What the model predicts: ``'velocity'`` (u_t), ``'score'``
            or ``'noise'``.
        loss_weight (str | None): SiT's weighting of score / noise losses:
            ``None``, ``'velocity'`` ((drift_var / sigma_t)^2) or ``'likelihood'``
            (drift_var / sigma_t^2). A velocity loss is never weighted.
        train_eps (float | None): Training times avoid the ends where a
            parametrisation divides by zero. None takes SiT's default: 1e-5 for VP,
            1e-3 for score / noise on Linear and GVP, 0 for velocity on Linear / GVP.
        sample_eps (float | None): The same for sampling (SiT: 1e-3 for VP and for
            score / noise; 0 for velocity on Linear / GVP).
        time_dist (str): Training times: ``'uniform'`` (SiT) or ``'logit_normal'``
            (SD3's rectified flow): the noise level 1 - t is
            ``sigmoid(N(logit_mean, logit_std))``. Both are mapped into the interval
            that ``train_eps`` leaves.
        logit_mean (float): Mean of the logit-normal (SD3: 0; > 0 favours noise).
        logit_std (float): Standard deviation of the logit-normal (SD3: 1).
        time_shift (float): Shift of the noise level ``s = 1 - t`` to
            ``k s / (1 + (k - 1) s)`` (SD3's shift; Open-Sora 1.2's
            ``use_timestep_transform``, whose ``k`` :func:`open_sora_time_shift` gives
            for a size and length), in training (after ``time_dist``) and in the
            fixed-step samplers' grids (ODE, SDE, and the ``shift`` of
            ``FlowMatchEulerDiscreteScheduler`` unless given): ``k`` > 1 spends more of
            both at high noise, which larger pictures and longer clips need (their
            many tokens keep more of the signal at a given noise level). Defaults to
            1 (no shift; SiT).
        timestep_convention (str): What the model is given as its time: ``'sit'``
            passes t in [0, 1] with 1 = data, as SiT's released models were
            trained; ``'dit'`` passes ``1000 * (1 - t)``, DiT's and diffusers' scale
            on which 1000 = noise, so an image DiT fine-tunes into a flow model
            with its time embedding's meaning kept.

    Sampler names (for :meth:`sample`) and their options:
        ``'ode_euler'``, ``'ode_heun'``: fixed steps; NFE = ``num_steps`` (Heun:
        ``2 * num_steps``). ``'ode_dopri5'``: adaptive (torchdiffeq); options
        ``atol`` (1e-6), ``rtol`` (1e-3); ``num_steps`` is not used.
        ``'sde_euler'`` (Euler-Maruyama), ``'sde_heun'``: ``num_steps`` as SiT's
        (``num_steps - 1`` steps on ``linspace(t0, t1, num_steps)``, then the last
        step); options ``diffusion_form`` (``'sigma'``, SiT's sampling default; or
        ``'SBDM'``, ``'constant'``, ``'linear'``, ``'decreasing'``,
        ``'increasing-decreasing'``), ``diffusion_norm`` (1.0), ``last_step``
        (``'Mean'``, ``'Tweedie'``, ``'Euler'`` or None) and ``last_step_size``
        (0.04). ``'FlowMatchEulerDiscreteScheduler'`` (diffusers; Linear path with
        velocity prediction only): its constructor's settings, e.g. ``shift`` (SD3:
        3.0), ``use_karras_sigmas``, ``stochastic_sampling``, but ``invert_sigmas``
        (and the dynamic shift, refused: ``use_dynamic_shifting`` and the settings that
        act only with it, ``time_shift_type``, ``base_shift``, ``max_shift``,
        ``base_image_seq_len``, ``max_image_seq_len``; its ``mu``, SD3's
        resolution-dependent shift, is not passed; give ``shift``).
    """

    # Options whose None is a value, not 'unset' (sample_images): SiT's --last-step None
    OPTIONS_TAKING_NONE = ('last_step',)
    # FlowMatchEulerDiscreteScheduler's settings the objective fixes: invert_sigmas
    # would run the flow from data to noise.
    SCHEDULER_FIXED = FLOW_MATCH_FIXED
    # The solvers of log_likelihood: the probability-flow ODE's.
    LIKELIHOOD_SAMPLERS = ('ode_dopri5', 'ode_heun', 'ode_euler')
    SAMPLER_OPTIONS = {
        'ode_euler': (), 'ode_heun': (), 'ode_dopri5': ('atol', 'rtol'),
        'sde_euler': SDE_OPTIONS, 'sde_heun': SDE_OPTIONS,
        'FlowMatchEulerDiscreteScheduler': tuple(
            name for name in scheduler_settings('FlowMatchEulerDiscreteScheduler')
            if name not in FLOW_MATCH_FIXED),
    }

    def __init__(self,
                 path: str = 'Linear',
                 prediction: str = 'velocity',
                 loss_weight: Optional[str] = None,
                 train_eps: Optional[float] = None,
                 sample_eps: Optional[float] = None,
                 time_dist: str = 'uniform',
                 logit_mean: float = 0.0,
                 logit_std: float = 1.0,
                 time_shift: float = 1.0,
                 timestep_convention: str = 'sit'):
        _check_choice('path', path, tuple(PATHS))
        _check_choice('prediction', prediction, PREDICTIONS)
        _check_choice('loss_weight', loss_weight, LOSS_WEIGHTS)
        _check_choice('time_dist', time_dist, ('uniform', 'logit_normal'))
        _check_choice('timestep_convention', timestep_convention, ('sit', 'dit'))
        if prediction == 'velocity' and loss_weight is not None:
            raise ValueError(f"loss_weight={loss_weight!r} weights score / noise losses; "
                             "a velocity loss is unweighted (SiT): set loss_weight=None")
        if logit_std <= 0:
            raise ValueError(f'logit_std must be > 0, got {logit_std}')
        if not 0 < time_shift < float('inf'):
            raise ValueError(f'time_shift must be > 0, got {time_shift}')
        # SiT's create_transport defaults: only where a parametrisation divides by
        # zero at an end of [0, 1] does it keep away from that end.
        if path == 'VP':
            default_train, default_sample = 1e-5, 1e-3
        elif prediction != 'velocity':
            default_train, default_sample = 1e-3, 1e-3
        else:
            default_train, default_sample = 0.0, 0.0
        self.train_eps = default_train if train_eps is None else float(train_eps)
        self.sample_eps = default_sample if sample_eps is None else float(sample_eps)
        for name, eps in (('train_eps', self.train_eps), ('sample_eps', self.sample_eps)):
            if not 0 <= eps < 0.5:
                raise ValueError(f'{name} must be in [0, 0.5), got {eps}')
            if eps == 0 and (prediction != 'velocity' or path == 'VP'):
                why = (f"prediction={prediction!r} divides by sigma_t = 0 at t = 1"
                       if prediction != 'velocity' else "the VP path's sigma_t is 0 at t = 1")
                raise ValueError(f'{name}=0 is not valid with path={path!r}: {why}; '
                                 f'leave it None (SiT default) or set it > 0')
        self.path_name, self.prediction, self.loss_weight = path, prediction, loss_weight
        self.path = PATHS[path]()
        self.time_dist, self.logit_mean, self.logit_std = time_dist, logit_mean, logit_std
        self.time_shift = float(time_shift)
        self.timestep_convention = timestep_convention
        self.last_nfe = 0

    # ------------------------------- time interval ------------------------------ #
    def interval(self, eps, sde=False, diffusion_form='sigma', last_step_size=0.0):
        """[t0, t1] that training (``eps=train_eps``) or sampling uses (SiT's
        ``check_interval``)."""
        t0, t1 = 0.0, 1.0
        if self.path_name == 'VP':
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        elif self.prediction != 'velocity' or sde:
            t0 = eps if (diffusion_form == 'SBDM' and sde) or self.prediction != 'velocity' \
                else 0.0
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        return t0, t1

    def model_time(self, t):
        """The time the model is called with (see ``timestep_convention``)."""
        return t if self.timestep_convention == 'sit' else 1000 * (1 - t)

    def _call(self, model, x, t, model_kwargs):
        """The model's prediction at ``x``, time ``t``; one ValueError line for an output
        not shaped like ``x`` (an AttributeError or a bare ``assert`` met it before)."""
        C = x.shape[1]
        out = check_model_output(
            model, model(x, self.model_time(t), **model_kwargs), x, (C, 2 * C),
            f'{type(self).__name__} expects {C} channels (the {self.prediction}; or '
            f"{2 * C}, a learned-sigma denoiser's, the variance dropped)")
        # A learned-sigma DiT returns 2C channels; SiT's models drop the second half.
        return out[:, :C] if out.shape[1] == 2 * C else out

    # ---------------------------------- training -------------------------------- #
    def sample_time(self, n, device):
        """Training times in [t0, t1]: uniform or logit-normal, then shifted."""
        t0, t1 = self.interval(self.train_eps)
        if self.time_dist == 'uniform':
            u = sample_rng.rand(n, device)
        else:  # the noise level 1 - u is logit-normal
            u = 1 - torch.sigmoid(self.logit_mean + self.logit_std * sample_rng.randn((n,), device))
        return t0 + (t1 - t0) * shift_times(u, self.time_shift)

    def loss(self, model, x0, model_kwargs=None):
        """SiT's training loss (``training_losses``): noise, t -> x_t -> predict.

        Args:
            model (Callable): ``model(x_t, time, **model_kwargs)``.
            x0 (Tensor): Clean latents (the data end, SiT's x1), shape (N, C, ...).
            model_kwargs (dict, optional): Conditioning passed to the model.

        Returns:
            dict: ``loss`` of shape (N,).
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        # the noise first, then t: SiT's order of draws (Transport.sample), so that a
        # seeded step gives SiT's loss (t first gave another sample's pair)
        noise = sample_rng.randn_like(x0)
        t = self.sample_time(x0.shape[0], x0.device)
        x_t, u_t = self.path.interpolate(t, noise, x0)
        out = self._call(model, x_t, t, model_kwargs)
        assert out.shape == x_t.shape, f'model output {tuple(out.shape)} != {tuple(x_t.shape)}'
        if self.prediction == 'velocity':
            return dict(loss=mean_flat((out - u_t)**2))
        _, drift_var = self.path.drift_terms(x_t, t)
        sigma_t, _ = self.path.sigma(_expand(t, x_t))
        if self.loss_weight == 'velocity':
            weight = (drift_var / sigma_t)**2
        elif self.loss_weight == 'likelihood':
            weight = drift_var / sigma_t**2
        else:
            weight = 1
        if self.prediction == 'noise':
            return dict(loss=mean_flat(weight * (out - noise)**2))
        return dict(loss=mean_flat(weight * (out * sigma_t + noise)**2))

    # ------------------------------ drift and score ----------------------------- #
    def velocity_and_score(self, model, x, t, model_kwargs, need_score=True):
        """The probability-flow velocity and (if asked) the score, from one model call."""
        out = self._call(model, x, t, model_kwargs)
        if self.prediction == 'velocity':
            score = self.path.score_from_velocity(out, x, t) if need_score else None
            return out, score
        if self.prediction == 'noise':
            score = out / -self.path.sigma(_expand(t, x))[0]
        else:
            score = out
        drift_mean, drift_var = self.path.drift_terms(x, t)
        return -drift_mean + drift_var * score, score

    # ---------------------------------- sampling -------------------------------- #
    def samplers(self):
        """Sampler names :meth:`sample` accepts."""
        return list(self.SAMPLER_OPTIONS)

    @torch.no_grad()
    def sample(self, model_fn, noise, model_kwargs, sampler='sde_euler', num_steps=250,
               generators=None, progress=False, **sampler_kwargs):
        """Transport ``noise`` (t = 0) to a sample (t = 1).

        Args:
            model_fn (Callable): ``model_fn(x, time, **model_kwargs)`` (e.g. a DiT's
                ``forward`` or ``forward_with_cfg``).
            noise (Tensor): Starting noise (N, C, ...).
            model_kwargs (dict): Conditioning passed to ``model_fn``.
            sampler (str): See the class docstring; the default is SiT's SDE sampling
                (Euler-Maruyama, ``diffusion_form='sigma'``, ``last_step='Mean'``).
            num_steps (int): Steps (see the class docstring); SiT's default 250 (numpy's
                int or a 0-d integer tensor is taken as the int).
            generators (list[torch.Generator], optional): One per sample for the SDE
                samplers' noise, so a sample depends on its own seed only.
            progress (bool): Show a progress bar.
            **sampler_kwargs: The sampler's options.

        Returns:
            Tensor: The sample, shaped like ``noise``; ``self.last_nfe`` holds the
            number of model evaluations.
        """
        num_steps = self.check_sample_options(sampler, num_steps, **sampler_kwargs)
        model = CountingModel(model_fn)
        if sampler.startswith('ode_'):
            x = self._sample_ode(model, noise, model_kwargs, sampler[len('ode_'):],
                                 num_steps, progress, **sampler_kwargs)
        elif sampler.startswith('sde_'):
            x = self._sample_sde(model, noise, model_kwargs, sampler[len('sde_'):],
                                 num_steps, generators, progress, **sampler_kwargs)
        else:
            x = self._sample_flow_match(model, noise, model_kwargs, num_steps, generators,
                                        progress, **sampler_kwargs)
        self.last_nfe = model.nfe
        return x

    def check_sample_options(self, sampler, num_steps=None, **options):
        """``sampler``, ``num_steps`` and the sampler's options as :meth:`sample` takes
        them, checked before any model call (and, through ``check_sample_settings``, by
        tools/infer.py and tools/test.py before the weights load and by tools/train.py
        in ``sample_cfg``): the name, the option names, their values, then the steps,
        each a one-line ValueError (a wrong value was a TypeError or an IndexError from
        torchdiffeq or diffusers, or all-NaN samples; the SDE samplers' one step was
        refused once the weights had loaded). ``num_steps`` None: :meth:`sample`'s
        default. Returns the step count as Python's int (:func:`check_num_steps`: a 0-d
        integer tensor or numpy's int is taken), which :meth:`sample` samples with."""
        check_sampler_name(sampler, self.samplers(), 'Transport')
        if sampler != 'FlowMatchEulerDiscreteScheduler':  # (its names: with its values, below)
            check_sampler_options(sampler, options, self.SAMPLER_OPTIONS[sampler])
        if sampler == 'ode_dopri5':
            defaults = keyword_defaults(self._sample_ode)
            for name in ('atol', 'rtol'):  # (0 and 0: 'underflow in dt 0.0')
                _check_number(name, options.get(name, defaults[name]), '> 0',
                              f"dopri5's {'absolute' if name == 'atol' else 'relative'} "
                              f'tolerance; SiT: {defaults[name]:g}')
        elif sampler.startswith('sde_'):
            defaults = keyword_defaults(self._sample_sde)
            options = dict(defaults, **options)
            form, last_step = options['diffusion_form'], options['last_step']
            _check_choice('diffusion_form', form, DIFFUSION_FORMS)
            _check_choice('last_step', last_step, LAST_STEPS)
            # (a negative norm made every sample NaN: sqrt of a negative diffusion)
            _check_number('diffusion_norm', options['diffusion_norm'], '>= 0',
                          f"the scale of the SDE's diffusion; SiT: "
                          f"{defaults['diffusion_norm']:g}")
            if last_step is not None:  # (None: no last step, its size unused)
                _check_number('last_step_size', options['last_step_size'], 'in (0, 1)',
                              f'the size of the {last_step!r} last step; SiT: '
                              f"{defaults['last_step_size']:g}")
            t0, _ = self.interval(self.sample_eps, sde=True, diffusion_form=form)
            if form == 'SBDM' and t0 == 0 and self.path_name != 'VP':
                raise ValueError(
                    f"diffusion_form='SBDM' is infinite at t = 0 on the {self.path_name} "
                    "path: set the objective's sample_eps > 0 (--cfg-options "
                    'model.diffusion.sample_eps=1e-3; in Python Transport(sample_eps=1e-3)) '
                    "or use diffusion_form='sigma'")
        elif sampler == 'FlowMatchEulerDiscreteScheduler':
            if self.path_name != 'Linear' or self.prediction != 'velocity':
                raise ValueError(
                    "FlowMatchEulerDiscreteScheduler samples rectified flow: it needs "
                    f"path='Linear' and prediction='velocity' (this objective: "
                    f"path={self.path_name!r}, prediction={self.prediction!r})")
            if 'shift' in options:  # (0: an IndexError inside diffusers)
                _check_number('shift', options['shift'], '> 0',
                              "the scheduler's time shift; SD3: 3")
            # (diffusers' stretch_shift_to_terminal divides by 1 - shift_terminal: 1 made
            # every sigma 1 but the last, one jump to data; above 1 or below 0 the sigmas
            # leave [0, 1]; 0 diffusers takes as unset. None: no stretch)
            if options.get('shift_terminal') is not None:
                _check_number('shift_terminal', options['shift_terminal'], 'in (0, 1)',
                              'the last sigma before 0 that the schedule is stretched to; '
                              'LTX-Video: 0.1')
        if num_steps is None:
            num_steps = keyword_defaults(self.sample)['num_steps']
        if sampler.startswith('sde_'):  # (grid points, as SiT's: 1 makes no step)
            return check_num_steps(num_steps, 2, why='the SDE samplers count grid points: '
                                   'num_steps - 1 steps')
        num_steps = check_num_steps(num_steps)
        if sampler == 'FlowMatchEulerDiscreteScheduler':  # (the steps first: the check
            check_scheduler_options(  # builds the scheduler with them)
                sampler, options, self.SCHEDULER_FIXED,
                f'the {self.path_name} path from noise at t = 0 to data at t = 1',
                self._flow_match_scheduler, num_steps)
        return num_steps

    def _sample_ode(self, model, x, model_kwargs, method, num_steps, progress,
                    atol=1e-6, rtol=1e-3):
        t0, t1 = self.interval(self.sample_eps)

        def drift(x, t):
            return self.velocity_and_score(model, x, t, model_kwargs, need_score=False)[0]

        if method == 'dopri5':
            return ode_adaptive(drift, x, t0, t1, 'dopri5', atol=atol, rtol=rtol)
        return ode_fixed_step(drift, x, t0, t1, num_steps, method, progress,
                              shift=self.time_shift)

    def _sample_sde(self, model, x, model_kwargs, method, num_steps, generators, progress,
                    diffusion_form='sigma', diffusion_norm=1.0, last_step='Mean',
                    last_step_size=0.04):
        # (the options and the steps were checked by check_sample_options)
        if last_step is None:
            last_step_size = 0.0
        t0, t1 = self.interval(self.sample_eps, sde=True, diffusion_form=diffusion_form,
                               last_step_size=last_step_size)

        def diffusion(x, t):
            return self.path.diffusion(x, t, diffusion_form, diffusion_norm)

        def sde_drift(x, t):
            velocity, score = self.velocity_and_score(model, x, t, model_kwargs)
            return velocity + diffusion(x, t) * score

        x = sde_fixed_step(sde_drift, diffusion, x, t0, t1, num_steps, method, generators,
                           progress, shift=self.time_shift)
        t = torch.full((x.shape[0],), t1, device=x.device, dtype=x.dtype)
        if last_step == 'Mean':  # the SDE's drift step with no noise
            return x + sde_drift(x, t) * last_step_size
        if last_step == 'Euler':  # the ODE's drift step
            return x + self.velocity_and_score(model, x, t, model_kwargs, False)[0] * \
                last_step_size
        if last_step == 'Tweedie':  # E[data | x_t1]
            alpha_t = self.path.alpha(_expand(t, x))[0]
            sigma_t = self.path.sigma(_expand(t, x))[0]
            score = self.velocity_and_score(model, x, t, model_kwargs)[1]
            return x / alpha_t + sigma_t**2 / alpha_t * score
        return x

    def _flow_match_scheduler(self, **options):
        """diffusers' FlowMatchEulerDiscreteScheduler with the sampler ``options`` (its
        settings), shifted by the objective's ``time_shift`` unless ``shift`` is given."""
        if self.time_shift != 1:
            options.setdefault('shift', self.time_shift)
        return build_noise_scheduler('FlowMatchEulerDiscreteScheduler',
                                     **scheduler_option_values(options))

    def _sample_flow_match(self, model, x, model_kwargs, num_steps, generators, progress,
                           **scheduler_kwargs):
        scheduler = self._flow_match_scheduler(**scheduler_kwargs)
        num_train = scheduler.config.num_train_timesteps

        def flow_fn(model_in, timestep):
            # diffusers: x = (1 - s) data + s noise with s = timestep / 1000, and the
            # model output is d x / d s = noise - data = -u_t at t = 1 - s.
            t = torch.full((model_in.shape[0],), 1 - float(timestep) / num_train,
                           device=model_in.device, dtype=model_in.dtype)
            return -self.velocity_and_score(model, model_in, t, model_kwargs, False)[0]

        return scheduler_sample_loop(scheduler, flow_fn, x, num_steps, generators, progress,
                                     desc='FlowMatchEulerDiscreteScheduler')

    # ------------------------------- log-likelihood ----------------------------- #
    @torch.no_grad()
    def log_likelihood(self, model_fn, x, model_kwargs=None, sampler='ode_dopri5',
                       num_steps=50, generators=None, atol=1e-6, rtol=1e-3):
        """Log-density of samples under the probability-flow ODE (SiT's
        ``sample_ode_likelihood``; FFJORD, Grathwohl et al. 2019).

        Integrates data -> noise with the instantaneous change of variables
        d log p / dt = -div v, the divergence estimated by Hutchinson's trick with
        one Rademacher probe per sample, held fixed over the solve.

        Args:
            model_fn (Callable): Unguided ``model_fn(x, time, **model_kwargs)``.
            x (Tensor): Data points (N, C, ...).
            sampler (str): ``'ode_dopri5'``, ``'ode_heun'`` or ``'ode_euler'``.
            num_steps (int): Steps of the fixed-step solvers.
            generators (list[torch.Generator], optional): One per sample for the
                probes.
            atol, rtol (float): dopri5's tolerances.

        Returns:
            dict: ``logp`` (N,) in nats, ``bpd`` (N,) bits per dimension (continuous
            density; no dequantisation term), ``prior`` the noise end z (N, C, ...).
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        num_steps = self._check_likelihood_arguments(model_fn, x, model_kwargs, sampler,
                                                     num_steps, atol, rtol)
        model = CountingModel(model_fn)
        t0, t1 = self.interval(self.sample_eps)
        draw = sample_rng.sampling_noise(x.shape, generators, x.device, x.dtype)
        probe = torch.where(draw > 0, 1.0, -1.0)

        def drift(state, s):  # reversed time s = 1 - t runs from 1 - t1 to 1 - t0
            y = state[0]
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                v = self.velocity_and_score(model, y, 1 - s, model_kwargs, False)[0]
                grad = torch.autograd.grad((v * probe).sum(), y)[0]
            div = (grad * probe).flatten(1).sum(1)
            return -v.detach(), div

        state = (x, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype))
        if sampler == 'ode_dopri5':
            z, delta = ode_adaptive(drift, state, 1 - t1, 1 - t0, 'dopri5', atol, rtol)
        else:
            z, delta = ode_fixed_step(drift, state, 1 - t1, 1 - t0, num_steps,
                                      sampler[len('ode_'):])
        dim = x[0].numel()
        prior = -0.5 * dim * math.log(2 * math.pi) - 0.5 * z.flatten(1).pow(2).sum(1)
        logp = prior - delta
        self.last_nfe = model.nfe
        return dict(logp=logp, bpd=-logp / (dim * math.log(2)), prior=z)

    def _check_likelihood_arguments(self, model_fn, x, model_kwargs, sampler, num_steps,
                                    atol, rtol):
        """:meth:`log_likelihood`'s arguments, checked before any model call: the solver
        (an ODE one), its tolerances and steps by :meth:`check_sample_options`, as
        :meth:`sample` checks them (0 steps gave the prior of x as its likelihood, zero
        tolerances torchdiffeq's 'underflow in dt 0.0'); no guidance; and, where
        ``model_fn`` is a module or its method with ``in_channels``, x's channels (a
        convolution's RuntimeError met them). Returns the steps as Python's int."""
        if sampler in self.samplers() and sampler not in self.LIKELIHOOD_SAMPLERS:
            raise ValueError(f'log_likelihood integrates the probability-flow ODE, which '
                             f'sampler {sampler!r} does not solve: choose one of '
                             f'{list(self.LIKELIHOOD_SAMPLERS)}')
        check_sampler_name(sampler, self.LIKELIHOOD_SAMPLERS, 'Transport.log_likelihood')
        # (the tolerances are dopri5's: another solver refuses them, as sample does)
        defaults = keyword_defaults(self.log_likelihood)
        tolerances = {name: value for name, value in (('atol', atol), ('rtol', rtol))
                      if sampler == 'ode_dopri5' or value != defaults[name]}
        num_steps = self.check_sample_options(sampler, num_steps, **tolerances)
        # A guided call (LatentDiffusion's: forward_with_cfg with cfg_scale) returns the
        # guided output for both halves of a doubled batch, which is no density's
        # velocity and whose second half's divergence is not its own input's.
        if 'cfg_scale' in model_kwargs or \
                getattr(model_fn, '__name__', None) == 'forward_with_cfg':
            given = (f'cfg_scale={model_kwargs["cfg_scale"]!r}' if 'cfg_scale' in model_kwargs
                     else 'forward_with_cfg')
            raise ValueError(f'log_likelihood is incompatible with guidance ({given} given; '
                             'SiT refuses it too): pass the unguided model (model.denoiser) '
                             'and model_kwargs without cfg_scale')
        module = model_fn if isinstance(model_fn, torch.nn.Module) else \
            getattr(model_fn, '__self__', None)
        channels = getattr(module, 'in_channels', None) \
            if isinstance(module, torch.nn.Module) else None
        if isinstance(channels, int) and (x.ndim < 2 or x.shape[1] != channels):
            raise ValueError(f'x has shape {tuple(x.shape)}, but {type(module).__name__} '
                             f'takes {channels} channels: pass latents (N, {channels}, ...) '
                             'as the model was trained on (the VAE\'s encoding, not pixels)')
        return num_steps

    def __repr__(self):
        return (f'Transport(path={self.path_name!r}, prediction={self.prediction!r}, '
                f'loss_weight={self.loss_weight!r}, train_eps={self.train_eps}, '
                f'sample_eps={self.sample_eps}, time_dist={self.time_dist!r}, '
                f'time_shift={self.time_shift:g}, '
                f'timestep_convention={self.timestep_convention!r})')


def open_sora_time_shift(height: int, width: int, num_frames: int, scale: float = 1.0):
    """Open-Sora 1.2's time shift for clips of ``num_frames`` frames of ``height`` x
    ``width`` pixels (its ``timestep_transform``): ``sqrt(height * width / 512**2) *
    sqrt(num_frames // 17 * 5) * scale``, the frames counted in 17s as its video VAE
    packs them (a picture: 1). For :class:`Transport`'s ``time_shift``; e.g. 480x848
    and 102 frames (4 s at 24 fps): 6.83."""
    for name, value in (('height', height), ('width', width), ('num_frames', num_frames)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive whole number, got {value!r}')
    if 1 < num_frames < 17:
        raise ValueError(f'num_frames={num_frames}: Open-Sora 1.2 counts frames in 17s '
                         '(num_frames // 17 * 5), which gives 0 below 17 frames; give a '
                         'time_shift of your own')
    frames = 1 if num_frames == 1 else num_frames // 17 * 5
    return math.sqrt(height * width / 512 ** 2) * math.sqrt(frames) * scale


def _check_choice(name, value, choices):
    """One ValueError line for a ``value`` not in ``choices``, with the choice it is
    likely meant for: the same word in other case ('mean': 'Mean'; 'none': None), else
    a close spelling (SiT's table's 'inccreasing-decreasing')."""
    if value in choices:
        return
    hint = ''
    if isinstance(value, str):
        import difflib
        lower = {str(choice).lower(): choice for choice in choices}  # (None: 'none')
        words = [key for key, choice in lower.items() if isinstance(choice, str)]
        close = [value.lower()] if value.lower() in lower else \
            difflib.get_close_matches(value.lower(), words, n=1)
        if close and lower[close[0]] is None:
            hint = f'; did you mean None (the value, not the word {value!r})?'
        elif close:
            hint = f'; did you mean {lower[close[0]]!r}?'
    raise ValueError(f'{name}={value!r} is not one of {list(choices)}{hint}')


def _check_number(name, value, allowed, what):
    """A sampler option that must be a finite number ``allowed`` ('> 0', '>= 0' or
    'in (0, 1)'); ``what`` says what it is."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:  # (NaN fails both comparisons)
        ok = (value >= 0 if allowed == '>= 0' else value > 0) and \
            value < (1 if allowed == 'in (0, 1)' else math.inf)
    if not ok:
        raise ValueError(f'{name}={value!r} is not a number {allowed} ({what})')


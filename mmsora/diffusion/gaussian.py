"""Gaussian diffusion as DiT trains and samples it.

Implements the discrete-time diffusion of Ho et al. 2020 ("Denoising Diffusion
Probabilistic Models") with the improvements of Nichol & Dhariwal 2021 ("Improved
Denoising Diffusion Probabilistic Models"): learned-range variances, the hybrid
MSE + VLB loss, the cosine schedule and timestep respacing; plus DDIM sampling
(Song et al. 2021, "Denoising Diffusion Implicit Models").

The maths follows the IDDPM code that DiT ships (facebookresearch/DiT ``diffusion/``:
``gaussian_diffusion.py``, ``respace.py``, ``diffusion_utils.py``) step for step, so a
model trained here sees exactly the noise levels, targets and losses of the original:
coefficient tables are float64 numpy arrays, gathered per batch as float32 tensors on
the timesteps' device. One class covers both the original ``GaussianDiffusion`` and its
``SpacedDiffusion``: every instance keeps a ``timestep_map`` (the identity when nothing
is skipped) and always calls the model with the original timestep values.
"""
import copy
import functools
import inspect
import math
import numbers

import numpy as np
import torch

from mmsora.registry import DIFFUSION, NOISE_SCHEDULERS
from mmsora.utils import sample_rng
from mmsora.utils.trained_settings import keyword_defaults
from .scheduler_sampling import (CountingModel, check_num_steps, check_sampler_name,
                                 check_sampler_options, check_scheduler_options,
                                 epsilon_from_x0, is_bool, scheduler_option_values,
                                 scheduler_sample_loop)
from .schedulers import build_noise_scheduler, ddpm_variance_type, scheduler_settings

__all__ = [
    'GaussianDiffusion', 'space_timesteps', 'get_named_beta_schedule', 'mean_flat',
    'normal_kl', 'discretized_gaussian_log_likelihood', 'check_model_output'
]


# --------------------------------------------------------------------------- #
#                               Helper functions                               #
# --------------------------------------------------------------------------- #
def mean_flat(tensor):
    """Mean over all non-batch dimensions."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def denoiser_name(model_fn):
    """Class name of the ``nn.Module`` behind a model function, or None.

    The objectives get the denoiser itself, one of its bound methods
    (``forward_with_cfg``) or wrappers around either (``CountingModel``,
    ``functools.partial``, LatentDiffusion's dtype / precision closures); this looks
    through a few levels of them. Only called to word an error.
    """
    level = [model_fn]
    for _ in range(6):
        inner = []
        for fn in level:
            if isinstance(fn, torch.nn.Module):
                return type(fn).__name__
            if isinstance(getattr(fn, '__self__', None), torch.nn.Module):
                return type(fn.__self__).__name__
            inner += [getattr(fn, a) for a in ('model_fn', 'func', '__wrapped__')
                      if callable(getattr(fn, a, None))]
            for cell in getattr(fn, '__closure__', None) or ():
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if callable(value) and not isinstance(value, type):
                    inner.append(value)
        level = inner
    return None


def check_model_output(model_fn, out, x, channels, expects, hints=None):
    """Raise one ValueError line when the model returned something else than a tensor
    shaped ``(N, c, ...)`` like its input ``x`` with ``c`` in ``channels``.

    A denoiser of one's own returning another shape met a bare ``assert`` (an
    AssertionError without a message), and one returning a diffusers output object
    (``UNet2DOutput``) an AttributeError on ``.shape``. Shape comparisons only: no
    host sync.

    Args:
        model_fn (Callable): The model function, only to name the denoiser.
        out: What it returned.
        x (Tensor): Its input x_t (N, C, ...).
        channels (tuple[int]): Output channel counts accepted.
        expects (str): Why, e.g. ``'learn_sigma=True expects 8 channels (...)'``.
        hints (dict, optional): Channel count -> advice appended for that count.

    Returns:
        The output, unchanged.
    """
    if (torch.is_tensor(out) and out.ndim == x.ndim and out.shape[0] == x.shape[0]
            and out.shape[1] in channels and out.shape[2:] == x.shape[2:]):
        return out
    name = denoiser_name(model_fn)
    who = f'model.denoiser ({name})' if name else 'the denoiser'
    if not torch.is_tensor(out):
        raise ValueError(f'{who} returned a {type(out).__name__}, not a tensor: return a '
                         'tensor (e.g. the .sample of a diffusers output)')
    head = f'{who} returned shape {tuple(out.shape)} for latents {tuple(x.shape)}'
    dims = {4: 'height, width', 5: 'frames, height, width'}.get(x.ndim, 'other dimensions')
    if out.ndim != x.ndim:
        raise ValueError(f'{head}: expected {x.ndim} dimensions (N, C, {dims}), '
                         f'got {out.ndim}')
    if out.shape[0] != x.shape[0]:
        raise ValueError(f'{head}: expected the batch of {x.shape[0]}, got {out.shape[0]}')
    if out.shape[2:] != x.shape[2:]:
        raise ValueError(f'{head}: expected the latents\' ({dims}) {tuple(x.shape[2:])}, '
                         f'got {tuple(out.shape[2:])}')
    raise ValueError(f'{head}: {expects}, got {out.shape[1]}'
                     f'{(hints or {}).get(out.shape[1], "")}')


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    Arguments broadcast; at least one of them must be a tensor.
    """
    tensor = next((x for x in (mean1, logvar1, mean2, logvar2)
                   if isinstance(x, torch.Tensor)), None)
    assert tensor is not None, 'at least one argument must be a Tensor'
    # torch.exp needs tensors: scalars take the dtype/device of the tensor argument.
    logvar1, logvar2 = (x if isinstance(x, torch.Tensor) else torch.tensor(x).to(tensor)
                        for x in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) +
                  ((mean1 - mean2)**2) * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """Fast tanh approximation of the standard normal CDF (as in the original)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-likelihood (nats) of ``x`` in [-1, 1] under a Gaussian discretised to 8 bits.

    Args:
        x (Tensor): Targets, uint8 values rescaled to [-1, 1].
        means (Tensor): Gaussian means, same shape as ``x``.
        log_scales (Tensor): Gaussian log standard deviations, same shape as ``x``.

    Returns:
        Tensor: Log probabilities, same shape as ``x``.
    """
    assert x.shape == means.shape == log_scales.shape
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    # The two edge bins extend to -inf / +inf.
    return torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


# --------------------------------------------------------------------------- #
#                                Beta schedules                                #
# --------------------------------------------------------------------------- #
def betas_for_alpha_bar(num_timesteps, alpha_bar, max_beta=0.999):
    """Betas that discretise a continuous ``alpha_bar(t)``, t in [0, 1]."""
    betas = []
    for i in range(num_timesteps):
        t1, t2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


def get_named_beta_schedule(schedule_name, num_timesteps):
    """DiT's named beta schedules: ``'linear'`` (Ho et al.) or ``'squaredcos_cap_v2'``
    (``'cosine'``, improved-diffusion's name for the same schedule).

    The linear schedule is rescaled by ``1000 / num_timesteps`` so that it stays close
    to the 1000-step one for any step count (Nichol & Dhariwal 2021).
    """
    if schedule_name == 'linear':
        scale = 1000 / num_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
    if schedule_name in ('squaredcos_cap_v2', 'cosine'):
        return betas_for_alpha_bar(
            num_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2)**2)
    raise ValueError(f"unknown beta schedule {schedule_name!r}: 'linear' or "
                     "'squaredcos_cap_v2' (also called 'cosine')")


# --------------------------------------------------------------------------- #
#                              Timestep respacing                              #
# --------------------------------------------------------------------------- #
def space_timesteps(num_timesteps, section_counts):
    """Pick the timesteps of a ``num_timesteps`` process that a shorter one keeps.

    The process is cut into ``len(section_counts)`` equal sections and each section is
    strided to its count, e.g. 300 steps with ``[10, 15, 20]`` keeps 10 of the first
    100, 15 of the next 100 and 20 of the last 100. ``'ddimN'`` uses the fixed integer
    stride of the DDIM paper (one section only).

    Args:
        num_timesteps (int): Steps of the original process.
        section_counts (str | list[int]): Counts per section, as a list or a
            comma-separated string (``'250'``, ``'10,15,20'``), or ``'ddimN'``.

    Returns:
        set[int]: The kept timesteps of the original process.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith('ddim'):
            desired_count = int(section_counts[len('ddim'):])
            for stride in range(1, num_timesteps + 1):  # (to num_timesteps: 1 step too)
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return set(range(0, num_timesteps, stride))
            # (IDDPM's message named num_timesteps, not the count asked for)
            counts = sorted({len(range(0, num_timesteps, s))
                             for s in range(1, num_timesteps + 1)})
            below = max((c for c in counts if c < desired_count), default=None)
            above = min((c for c in counts if c > desired_count), default=None)
            near = ' or '.join(str(c) for c in (below, above) if c is not None)
            raise ValueError(f'DDIM cannot take {desired_count} steps: its integer stride '
                             f'over the {num_timesteps} timesteps (the DDIM paper\'s '
                             f'spacing) gives {near} steps; give one of those, or '
                             "spacing='even' (DiT's create_diffusion(N): any count)")
        section_counts = [int(x) for x in section_counts.split(',')]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f'cannot divide section of {size} steps into {section_count}')
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


# --------------------------------------------------------------------------- #
#                              Gaussian diffusion                              #
# --------------------------------------------------------------------------- #
@DIFFUSION.register_module()
class GaussianDiffusion:
    """Training losses and samplers of a discrete Gaussian diffusion (DiT / IDDPM).

    Arguments and defaults are those of DiT's ``create_diffusion``. The model is any
    callable ``model(x, t, **model_kwargs)`` returning ``(N, C, ...)`` or, with
    ``learn_sigma``, ``(N, 2C, ...)`` (epsilon or x0 first, then the variance
    interpolation value in [-1, 1]). Inputs may be images ``(N, C, H, W)`` or videos
    ``(N, C, T, H, W)``; losses are averaged over all non-batch dimensions.

    Timesteps ``t`` passed to the methods index this (possibly respaced) process,
    ``0 .. num_timesteps - 1``; the model always receives the original timestep values
    ``timestep_map[t]``. After respacing, ``num_timesteps`` is the number of kept steps
    and ``original_num_steps`` the length of the process it was cut from.

    Args:
        num_timesteps (int): Steps of the full diffusion process. Defaults to 1000.
        beta_schedule (str): ``'linear'`` or ``'squaredcos_cap_v2'``.
        learn_sigma (bool): Model predicts the variance too (learned range).
        sigma_small (bool): Without ``learn_sigma``, use the posterior variance
            (fixed small) instead of beta (fixed large).
        predict_xstart (bool): Model predicts x0 instead of epsilon.
        use_kl (bool): Train on the rescaled variational bound alone.
        rescale_learned_sigmas (bool): Scale the VLB term by ``num_timesteps / 1000``.
        timestep_respacing (str | list[int] | None): Keep only these steps, see
            :func:`space_timesteps`; ``None`` or ``''`` keeps all of them.
    """

    def __init__(self,
                 num_timesteps=1000,
                 beta_schedule='linear',
                 learn_sigma=True,
                 sigma_small=False,
                 predict_xstart=False,
                 use_kl=False,
                 rescale_learned_sigmas=False,
                 timestep_respacing=None):
        self._init_args = dict(
            num_timesteps=num_timesteps, beta_schedule=beta_schedule, learn_sigma=learn_sigma,
            sigma_small=sigma_small, predict_xstart=predict_xstart, use_kl=use_kl,
            rescale_learned_sigmas=rescale_learned_sigmas)
        self.model_mean_type = 'start_x' if predict_xstart else 'epsilon'
        if learn_sigma:
            self.model_var_type = 'learned_range'
        else:
            self.model_var_type = 'fixed_small' if sigma_small else 'fixed_large'
        if use_kl:
            self.loss_type = 'rescaled_kl'
        else:
            self.loss_type = 'rescaled_mse' if rescale_learned_sigmas else 'mse'

        self.original_num_steps = num_timesteps
        self._space(timestep_respacing)

    def __init_subclass__(cls, **kwargs):
        """Record the arguments a subclass is built with, its own as well as these,
        for :meth:`respace` to build it again with."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get('__init__')
        if init is None:
            return

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            if '_built_with' not in self.__dict__:  # the outermost constructor's
                self._built_with = (args, kw)
            init(self, *args, **kw)
        cls.__init__ = __init__

    def _space(self, timestep_respacing):
        """Build the tables of the process keeping ``timestep_respacing`` steps of the
        full one: betas recomputed from alphas_cumprod at the kept steps. Done even
        when all steps are kept, as DiT always builds a SpacedDiffusion."""
        num_timesteps = self.original_num_steps
        self.timestep_respacing = timestep_respacing
        if timestep_respacing is None or timestep_respacing == '':
            timestep_respacing = [num_timesteps]
        use_timesteps = space_timesteps(num_timesteps, timestep_respacing)
        base_betas = get_named_beta_schedule(self._init_args['beta_schedule'], num_timesteps)
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        last_alpha_cumprod, betas, timestep_map = 1.0, [], []
        for i, alpha_cumprod in enumerate(base_alphas_cumprod):
            if i in use_timesteps:
                betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        self.timestep_map = np.array(timestep_map, dtype=np.int64)
        self._build_tables(np.array(betas, dtype=np.float64))

    def _build_tables(self, betas):
        """Precompute the float64 coefficient tables of q and the posterior."""
        assert betas.ndim == 1 and (betas > 0).all() and (betas <= 1).all()
        self._device_tables = {}  # (name, device) -> tensor; see _table
        self.betas = betas
        self.log_betas = np.log(betas)
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod))
        # The posterior variance is 0 at t = 0, so its log borrows the t = 1 value.
        # (A one-step process has no t = 1: fall back to log(beta), where the original
        # leaves the table empty.)
        if self.num_timesteps > 1:
            self.posterior_log_variance_clipped = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            fixed_large = np.append(self.posterior_variance[1], betas[1:])
        else:
            self.posterior_log_variance_clipped = np.log(betas)
            fixed_large = betas
        self.posterior_mean_coef1 = (
            betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod))
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod))

        # Fixed variances; fixed-large starts at the posterior variance for a better
        # decoder log likelihood (as the original).
        self.fixed_large_variance = fixed_large
        self.fixed_large_log_variance = np.log(fixed_large)
        # model_var_type -> the names of its variance and log variance tables
        self._fixed_variance = {
            'fixed_large': ('fixed_large_variance', 'fixed_large_log_variance'),
            'fixed_small': ('posterior_variance', 'posterior_log_variance_clipped'),
        }

    def _table(self, name: str, device) -> torch.Tensor:
        """The table ``name`` (float64 coefficients, or the int64 timestep map; one
        value per timestep) as a tensor on ``device``. On the CPU it is a view of the
        numpy array. On another device it is copied there once and kept: a blocking
        copy from host memory waits for the GPU to finish all the work queued before
        it, and a training step reads 10 tables 16 times (the original copied at every
        read). The tables are built once (``_build_tables``) and never changed."""
        device = torch.device(device)
        if device.type == 'cpu':
            return torch.from_numpy(getattr(self, name))
        table = self._device_tables.get((name, device))
        if table is None:
            table = torch.from_numpy(getattr(self, name)).to(device)
            self._device_tables[(name, device)] = table
        return table

    def __getstate__(self):
        """Pickled without the device copies (a GPU's tensors would not load on a
        machine without one); they are made again on first use."""
        state = self.__dict__.copy()
        state['_device_tables'] = {}
        return state

    def _extract(self, name: str, t: torch.Tensor, shape) -> torch.Tensor:
        """Table ``name`` at timestep indices ``t`` as float32 on ``t``'s device,
        broadcast to ``shape``."""
        res = self._table(name, t.device)[t].float()
        return res.view(-1, *([1] * (len(shape) - 1))).expand(shape)

    def respace(self, timestep_respacing):
        """The same diffusion keeping ``timestep_respacing`` steps of the full process.

        A subclass is built again with the arguments it was built with, its own too:
        they were dropped (a subclass with an argument of its own failed to sample with
        a TypeError, or sampled with its default). Where its constructor does not pass
        ``timestep_respacing`` on, it is copied and the copy's tables respaced."""
        built = self.__dict__.get('_built_with')
        if built is None:  # GaussianDiffusion, or a subclass with its constructor
            return type(self)(**self._init_args, timestep_respacing=timestep_respacing)
        args, kwargs = built
        try:
            bound = inspect.signature(type(self)).bind(*args, **kwargs)
        except TypeError:
            bound = None
        if bound is not None:
            params = bound.signature.parameters
            more = next((name for name, p in params.items()
                         if p.kind is p.VAR_KEYWORD), None)
            if 'timestep_respacing' in params:
                bound.arguments['timestep_respacing'] = timestep_respacing
            elif more is not None:
                bound.arguments[more] = {**bound.arguments.get(more, {}),
                                         'timestep_respacing': timestep_respacing}
            if 'timestep_respacing' in params or more is not None:
                respaced = type(self)(*bound.args, **bound.kwargs)
                if respaced.timestep_respacing == timestep_respacing:
                    return respaced
        respaced = copy.copy(self)
        respaced._space(timestep_respacing)
        return respaced

    def _call_model(self, model, x, t, model_kwargs):
        """Call ``model`` with the original timestep values of indices ``t``."""
        return model(x, self._table('timestep_map', t.device).to(t.dtype)[t], **model_kwargs)

    def _check_output(self, model, out, x):
        """One ValueError line for a model output not shaped ``(N, C, ...)`` like ``x``
        (``(N, 2C, ...)`` with ``learn_sigma``): a bare ``assert`` met it before."""
        C = x.shape[1]
        if self.model_var_type == 'learned_range':
            return check_model_output(
                model, out, x, (2 * C, ), f"learn_sigma=True expects {2 * C} channels (the "
                f"mean and the variance's)", {C: '; set model.diffusion.learn_sigma=False '
                                                 'for a denoiser without a variance output'})
        return check_model_output(
            model, out, x, (C, ), f'learn_sigma=False expects {C} channels',
            {2 * C: '; set model.diffusion.learn_sigma=True for a denoiser that predicts '
                    'the variance too (as DiT)'})

    # ----------------------------- forward process ---------------------------- #
    def q_mean_variance(self, x_start, t):
        """Mean, variance and log variance of q(x_t | x_0)."""
        mean = self._extract('sqrt_alphas_cumprod', t, x_start.shape) * x_start
        variance = self._extract('one_minus_alphas_cumprod', t, x_start.shape)
        log_variance = self._extract('log_one_minus_alphas_cumprod', t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(acp_t) x_0, (1 - acp_t) I)."""
        if noise is None:
            noise = sample_rng.randn_like(x_start)
        assert noise.shape == x_start.shape
        return (self._extract('sqrt_alphas_cumprod', t, x_start.shape) * x_start +
                self._extract('sqrt_one_minus_alphas_cumprod', t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        assert x_start.shape == x_t.shape
        mean = (self._extract('posterior_mean_coef1', t, x_t.shape) * x_start +
                self._extract('posterior_mean_coef2', t, x_t.shape) * x_t)
        variance = self._extract('posterior_variance', t, x_t.shape)
        log_variance_clipped = self._extract('posterior_log_variance_clipped', t, x_t.shape)
        return mean, variance, log_variance_clipped

    def _predict_xstart_from_eps(self, x_t, t, eps):
        """x_0 = x_t / sqrt(acp_t) - sqrt(1 / acp_t - 1) eps."""
        assert x_t.shape == eps.shape
        return (self._extract('sqrt_recip_alphas_cumprod', t, x_t.shape) * x_t -
                self._extract('sqrt_recipm1_alphas_cumprod', t, x_t.shape) * eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """Inverse of :meth:`_predict_xstart_from_eps`."""
        return (self._extract('sqrt_recip_alphas_cumprod', t, x_t.shape) * x_t -
                pred_xstart) / self._extract('sqrt_recipm1_alphas_cumprod', t, x_t.shape)

    # ----------------------------- reverse process ---------------------------- #
    def p_mean_variance(self, model, x, t, clip_denoised=False, model_kwargs=None):
        """Apply the model to get p(x_{t-1} | x_t) and the prediction of x_0.

        Args:
            model (Callable): ``model(x, t, **model_kwargs)``.
            x (Tensor): x_t, shape (N, C, ...).
            t (Tensor): Timestep indices, shape (N,).
            clip_denoised (bool): Clamp the predicted x_0 to [-1, 1].
            model_kwargs (dict, optional): Extra model arguments (conditioning).

        Returns:
            dict: ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` (all shaped
            like ``x``) and ``extra`` (a second model output, if it returned a tuple).
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        B, C = x.shape[:2]
        assert t.shape == (B, )
        model_output = self._call_model(model, x, t, model_kwargs)
        extra = None
        if isinstance(model_output, tuple) and len(model_output) == 2:
            model_output, extra = model_output
        self._check_output(model, model_output, x)

        if self.model_var_type == 'learned_range':
            model_output, model_var_values = torch.split(model_output, C, dim=1)
            # The model's value in [-1, 1] interpolates the log variance between the
            # posterior variance (min) and beta (max).
            min_log = self._extract('posterior_log_variance_clipped', t, x.shape)
            max_log = self._extract('log_betas', t, x.shape)
            frac = (model_var_values + 1) / 2
            model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        else:
            variance, log_variance = self._fixed_variance[self.model_var_type]
            model_variance = self._extract(variance, t, x.shape)
            model_log_variance = self._extract(log_variance, t, x.shape)

        if self.model_mean_type == 'start_x':
            pred_xstart = model_output
        else:
            pred_xstart = self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        assert model_mean.shape == model_log_variance.shape == pred_xstart.shape == x.shape
        return dict(mean=model_mean, variance=model_variance, log_variance=model_log_variance,
                    pred_xstart=pred_xstart, extra=extra)

    def p_sample(self, model, x, t, clip_denoised=False, model_kwargs=None, generator=None):
        """Sample x_{t-1} ~ p(x_{t-1} | x_t) (ancestral DDPM step).

        Returns:
            dict: ``sample`` and ``pred_xstart``.
        """
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        noise = sample_rng.sampling_noise(x.shape, generator, x.device, x.dtype)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))  # no noise at t=0
        sample = out['mean'] + nonzero_mask * torch.exp(0.5 * out['log_variance']) * noise
        return dict(sample=sample, pred_xstart=out['pred_xstart'])

    def ddim_sample(self,
                    model,
                    x,
                    t,
                    clip_denoised=False,
                    model_kwargs=None,
                    eta=0.0,
                    generator=None):
        """Sample x_{t-1} with DDIM (Song et al. 2021, eq. 12); ``eta=0`` is deterministic.

        Returns:
            dict: ``sample`` and ``pred_xstart``.
        """
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        # Re-derive epsilon in case the model predicts x_0 (or x_0 was clipped).
        eps = self._predict_eps_from_xstart(x, t, out['pred_xstart'])
        alpha_bar = self._extract('alphas_cumprod', t, x.shape)
        alpha_bar_prev = self._extract('alphas_cumprod_prev', t, x.shape)
        sigma = (eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) *
                 torch.sqrt(1 - alpha_bar / alpha_bar_prev))
        noise = sample_rng.sampling_noise(x.shape, generator, x.device, x.dtype)
        mean_pred = (out['pred_xstart'] * torch.sqrt(alpha_bar_prev) +
                     torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))  # no noise at t=0
        sample = mean_pred + nonzero_mask * sigma * noise
        return dict(sample=sample, pred_xstart=out['pred_xstart'])

    def ddim_reverse_sample(self, model, x, t, clip_denoised=False, model_kwargs=None):
        """Deterministic DDIM step x_t -> x_{t+1} (inversion)."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out['pred_xstart'])
        alpha_bar_next = self._extract('alphas_cumprod_next', t, x.shape)
        mean_pred = (out['pred_xstart'] * torch.sqrt(alpha_bar_next) +
                     torch.sqrt(1 - alpha_bar_next) * eps)
        return dict(sample=mean_pred, pred_xstart=out['pred_xstart'])

    # ------------------------------ sampling loops ----------------------------- #
    def p_sample_loop(self,
                      model,
                      shape,
                      noise=None,
                      clip_denoised=False,
                      model_kwargs=None,
                      device=None,
                      progress=False,
                      generator=None):
        """Generate samples of ``shape`` with ancestral sampling; returns x_0."""
        final = None
        for final in self.p_sample_loop_progressive(
                model, shape, noise=noise, clip_denoised=clip_denoised,
                model_kwargs=model_kwargs, device=device, progress=progress,
                generator=generator):
            pass
        return final['sample']

    def p_sample_loop_progressive(self,
                                  model,
                                  shape,
                                  noise=None,
                                  clip_denoised=False,
                                  model_kwargs=None,
                                  device=None,
                                  progress=False,
                                  generator=None):
        """Yield the :meth:`p_sample` output of every step, from t = T - 1 to 0."""
        yield from self._loop(self.p_sample, model, shape, noise, device, progress, generator,
                              dict(clip_denoised=clip_denoised, model_kwargs=model_kwargs))

    def ddim_sample_loop(self,
                         model,
                         shape,
                         noise=None,
                         clip_denoised=False,
                         model_kwargs=None,
                         device=None,
                         progress=False,
                         eta=0.0,
                         generator=None):
        """Generate samples of ``shape`` with DDIM; returns x_0."""
        final = None
        for final in self.ddim_sample_loop_progressive(
                model, shape, noise=noise, clip_denoised=clip_denoised,
                model_kwargs=model_kwargs, device=device, progress=progress, eta=eta,
                generator=generator):
            pass
        return final['sample']

    def ddim_sample_loop_progressive(self,
                                     model,
                                     shape,
                                     noise=None,
                                     clip_denoised=False,
                                     model_kwargs=None,
                                     device=None,
                                     progress=False,
                                     eta=0.0,
                                     generator=None):
        """Yield the :meth:`ddim_sample` output of every step, from t = T - 1 to 0."""
        yield from self._loop(
            self.ddim_sample, model, shape, noise, device, progress, generator,
            dict(clip_denoised=clip_denoised, model_kwargs=model_kwargs, eta=eta))

    def _loop(self, step_fn, model, shape, noise, device, progress, generator, step_kwargs):
        """Run ``step_fn`` from pure noise down to t = 0, yielding each step's output."""
        assert isinstance(shape, (tuple, list))
        if device is None:
            device = _infer_device(model, noise, generator)
        img = noise
        if img is None:
            img = sample_rng.sampling_noise(shape, generator, device, torch.float32)
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices)
        for i in indices:
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)  # no host copy
            with torch.no_grad():
                out = step_fn(model, img, t, generator=generator, **step_kwargs)
            yield out
            img = out['sample']

    # ---------------------------------- losses --------------------------------- #
    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=False, model_kwargs=None):
        """One term of the variational bound, in bits per dimension.

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the discretised
        decoder NLL -log p(x_0 | x_1) at t = 0.

        Returns:
            dict: ``output`` (shape (N,)) and ``pred_xstart``.
        """
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(
            x_start=x_start, x_t=x_t, t=t)
        out = self.p_mean_variance(
            model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance_clipped, out['mean'], out['log_variance'])
        kl = mean_flat(kl) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out['mean'], log_scales=0.5 * out['log_variance'])
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        output = torch.where(t == 0, decoder_nll, kl)
        return dict(output=output, pred_xstart=out['pred_xstart'])

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Training losses at timesteps ``t`` (Nichol & Dhariwal 2021 hybrid loss).

        Args:
            model (Callable): ``model(x, t, **model_kwargs)``.
            x_start (Tensor): Clean inputs x_0, shape (N, C, ...).
            t (Tensor): Timestep indices, shape (N,).
            model_kwargs (dict, optional): Extra model arguments (conditioning).
            noise (Tensor, optional): The noise to add; drawn if not given.

        Returns:
            dict: Per-sample losses of shape (N,): ``loss``, and with MSE losses ``mse``
            plus, when the variance is learned, ``vb``.
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if noise is None:
            noise = sample_rng.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}

        if self.loss_type == 'rescaled_kl':
            terms['loss'] = self._vb_terms_bpd(
                model, x_start, x_t, t, clip_denoised=False,
                model_kwargs=model_kwargs)['output'] * self.num_timesteps
            return terms

        model_output = self._check_output(
            model, self._call_model(model, x_t, t, model_kwargs), x_t)
        if self.model_var_type == 'learned_range':
            C = x_t.shape[1]
            model_output, model_var_values = torch.split(model_output, C, dim=1)
            # Learn the variance with the VLB but keep it from moving the mean: the
            # bound sees a frozen copy of the mean prediction.
            frozen_out = torch.cat([model_output.detach(), model_var_values], dim=1)
            terms['vb'] = self._vb_terms_bpd(
                lambda *args, r=frozen_out: r, x_start, x_t, t, clip_denoised=False)['output']
            if self.loss_type == 'rescaled_mse':
                # Divide by 1000 for equivalence with the initial implementation.
                terms['vb'] *= self.num_timesteps / 1000.0

        target = x_start if self.model_mean_type == 'start_x' else noise
        assert model_output.shape == target.shape == x_start.shape
        terms['mse'] = mean_flat((target - model_output)**2)
        terms['loss'] = terms['mse'] + terms['vb'] if 'vb' in terms else terms['mse']
        return terms

    # --------------------------- objective interface --------------------------- #
    # Every objective in the DIFFUSION registry provides ``loss`` and ``sample`` (and
    # ``last_nfe``); LatentDiffusion calls nothing else.
    # clip_denoised: IDDPM's clamp of the predicted x0 to [-1, 1], for models of pixels;
    # off by default, as DiT's sample.py samples its latents (they exceed [-1, 1]).
    SAMPLER_OPTIONS = {'ddpm': ('clip_denoised', ), 'ddim': ('clip_denoised', 'eta', 'spacing')}
    # 'ddim''s steps: 'stride', the DDIM paper's integer stride from t = 0 (IDDPM's
    # 'ddimN', diffusers' DDIMScheduler's leading spacing: ..., 960, 980 for 50);
    # 'even', spread evenly from 0 to T - 1 as DiT's create_diffusion(str(N)), on which
    # Latte's and Open-Sora 1.0's sample.py run DDIM (..., 979, 999; any count). The
    # default is the stride: with a cosine schedule t = T - 1 is all but pure noise
    # (sqrt(alphabar) 5e-5), and DDIM, unclipped, blew the demo's pixels up to 3000.
    DDIM_SPACINGS = ('stride', 'even')
    # A diffusers scheduler sampler takes its constructor's settings as options
    # (solver_order, timestep_spacing, use_karras_sigmas, ...) but these: the trained
    # process (scheduler_overrides' timesteps and betas; zero-SNR rescaled betas and flow
    # sigmas are another one) and the epsilon the sampling loop hands its step. The
    # dynamic shift (use_dynamic_shifting, time_shift_type: set_timesteps' mu, SD3's
    # resolution-dependent flow_shift) acts on flow sigmas alone: on the betas' sigmas
    # DPM-Solver++ ignored it without a word, UniPC asked for a mu the loop does not pass.
    # (A name here that the chosen scheduler has not, DDIM's use_dynamic_shifting, is
    # refused as an unknown option, not as the objective's.)
    SCHEDULER_FIXED = ('num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule',
                       'trained_betas', 'rescale_betas_zero_snr', 'use_flow_sigmas',
                       'flow_shift', 'use_dynamic_shifting', 'time_shift_type',
                       'prediction_type')

    def samplers(self):
        """Sampler names :meth:`sample` accepts: DiT's own, then diffusers' schedulers."""
        return list(self.SAMPLER_OPTIONS) + sorted(
            n for n in NOISE_SCHEDULERS.module_dict if n != 'FlowMatchEulerDiscreteScheduler')

    def loss(self, model, x0, model_kwargs=None):
        """Training loss with uniformly drawn timesteps (DiT's training step).

        Args:
            model (Callable): ``model(x, t, **model_kwargs)``.
            x0 (Tensor): Clean latents, shape (N, C, ...).
            model_kwargs (dict, optional): Conditioning passed to the model.

        Returns:
            dict: ``loss`` of shape (N,); ``mse`` (and ``vb`` with a learned
            variance), also (N,), for logging.
        """
        t = sample_rng.randint(self.num_timesteps, x0.shape[0], x0.device)
        return self.training_losses(model, x0, t, model_kwargs=model_kwargs)

    @torch.no_grad()
    def sample(self, model_fn, noise, model_kwargs, sampler='ddpm', num_steps=250,
               generators=None, progress=False, **sampler_kwargs):
        """Denoise ``noise`` into a sample.

        Args:
            model_fn (Callable): ``model_fn(x, t, **model_kwargs)`` with DiT's
                timesteps (0 .. 999); it may return ``2C`` channels (learned sigma).
            noise (Tensor): Starting noise (N, C, ...).
            model_kwargs (dict): Conditioning passed to ``model_fn``.
            sampler (str): ``'ddpm'`` or ``'ddim'`` (DiT's own loops, respaced to
                ``num_steps``: DDPM as DiT's ``create_diffusion(str(num_steps))``, DDIM
                on :attr:`DDIM_SPACINGS`) or a diffusers scheduler registered in
                ``NOISE_SCHEDULERS`` (given this objective's betas, and DDPM its fixed
                variance, :meth:`scheduler_overrides`; it takes epsilon: with
                ``predict_xstart`` the model's x0 is turned into it first).
            num_steps (int): Number of sampling steps (numpy's int or a 0-d integer
                tensor is taken as the int).
            generators (list[torch.Generator], optional): One per sample, so a
                sample's noise depends on its own seed only.
            progress (bool): Show a progress bar.
            **sampler_kwargs: ``eta`` and ``spacing`` (``'stride'``, default, or
                ``'even'``) for ``'ddim'``; ``clip_denoised`` (False) for ``'ddpm'`` and
                ``'ddim'``: clamp each step's predicted x0 to [-1, 1] (IDDPM's, for
                pixel-space models; not latents). A diffusers scheduler takes its
                constructor's settings (``algorithm_type``, ``solver_order``,
                ``timestep_spacing``, ...) but :attr:`SCHEDULER_FIXED`.

        Returns:
            Tensor: The sample x0, shaped like ``noise``. ``self.last_nfe`` holds the
            number of model evaluations it took.
        """
        num_steps = self.check_sample_options(sampler, num_steps, **sampler_kwargs)
        model_fn = CountingModel(model_fn)
        if sampler == 'ddim':
            spacing = sampler_kwargs.pop('spacing', 'stride')
            spec = f'ddim{num_steps}' if spacing == 'stride' else str(num_steps)
            x = self.respace(spec).ddim_sample_loop(
                model_fn, noise.shape, noise=noise, model_kwargs=model_kwargs,
                progress=progress, generator=generators, **sampler_kwargs)
        elif sampler == 'ddpm':
            x = self.respace(str(num_steps)).p_sample_loop(
                model_fn, noise.shape, noise=noise, model_kwargs=model_kwargs,
                progress=progress, generator=generators, **sampler_kwargs)
        else:
            channels = noise.shape[1]
            scheduler = self.build_scheduler(sampler, **sampler_kwargs)

            def eps_fn(model_in, t):
                t_batch = torch.full((model_in.shape[0],), float(t), device=model_in.device)
                # Learned-sigma models output (eps or x0, variance); schedulers take eps.
                out = check_model_output(
                    model_fn, model_fn(model_in, t_batch, **model_kwargs), model_in,
                    (channels, 2 * channels), f'{sampler} expects {channels} channels (the '
                    f'noise; or {2 * channels}, a learned-sigma output, the variance dropped)'
                )[:, :channels]
                if self.model_mean_type == 'start_x':
                    # An x0 prediction (guided, if at all, as x0: the 'ddim' path's
                    # way) becomes the epsilon the scheduler's step turns back into it.
                    out = epsilon_from_x0(scheduler, out, model_in, t)
                return out

            x = scheduler_sample_loop(scheduler, eps_fn, noise, num_steps, generators,
                                      progress, desc=sampler)
        self.last_nfe = model_fn.nfe
        return x

    def check_sample_options(self, sampler, num_steps=None, **options):
        """``sampler``, ``num_steps`` and the sampler's options as :meth:`sample` takes
        them, checked before any model call (and, through ``check_sample_settings``, by
        tools/infer.py and tools/test.py before the weights load and by tools/train.py
        in ``sample_cfg``): the name, the steps, the option names, then their values,
        each a one-line ValueError. A wrong spacing or a step count DDIM's stride does
        not make was refused only once the weights had loaded; an eta above 1 made NaN
        samples (the square root of a negative number), a negative one sampled as its
        opposite, a word was a TypeError. ``num_steps`` None: :meth:`sample`'s default.
        Returns the step count as Python's int (:func:`check_num_steps`: a 0-d integer
        tensor or numpy's int is taken), which :meth:`sample` samples with."""
        check_sampler_name(sampler, self.samplers(), type(self).__name__)
        if num_steps is None:
            num_steps = keyword_defaults(self.sample)['num_steps']
        num_steps = check_num_steps(num_steps, 1, self.num_timesteps,
                                    f'the diffusion has {self.num_timesteps} timesteps')
        if sampler not in self.SAMPLER_OPTIONS:  # a diffusers scheduler
            if options.get('variance_type') in ('learned', 'learned_range'):
                raise ValueError(f"variance_type={options['variance_type']!r} is not for "
                                 f'{sampler}: the sampling loop hands it epsilon alone (a '
                                 "learned variance dropped); for DiT's learned variance use "
                                 "sampler 'ddpm'")
            check_scheduler_options(
                sampler, options, self.SCHEDULER_FIXED,
                f"{type(self).__name__}'s {self.original_num_steps} timesteps, beta_schedule "
                f"{self._init_args['beta_schedule']!r}, no flow sigmas or shift, epsilon "
                'handed to the scheduler',
                functools.partial(self.build_scheduler, sampler), num_steps)
            return num_steps
        check_sampler_options(sampler, options, self.SAMPLER_OPTIONS.get(sampler, ()))
        clip = options.get('clip_denoised', False)
        if not is_bool(clip):  # (--sampler-options clip_denoised=false: a word, true)
            raise ValueError(f'clip_denoised={clip!r} is not True or False (clamp the '
                             'predicted x0 to [-1, 1]: for pixel-space models)')
        if sampler != 'ddim':
            return num_steps
        spacing = options.get('spacing', 'stride')
        if spacing not in self.DDIM_SPACINGS:
            raise ValueError(f"sampler 'ddim' takes spacing='stride' (the DDIM paper's, "
                             "from t = 0) or 'even' (DiT's create_diffusion(str(N)), to "
                             f't = T - 1), got {spacing!r}')
        eta = options.get('eta', 0.0)
        if not (isinstance(eta, numbers.Real) and not isinstance(eta, bool) and 0 <= eta <= 1):
            raise ValueError(f"eta={eta!r} is not a number in [0, 1] (DDIM's noise: 0 none, "
                             "1 DDPM's posterior variance)")
        if spacing == 'stride':  # (the count it cannot make is named with those it can)
            space_timesteps(self.original_num_steps, f'ddim{num_steps}')
        return num_steps

    def build_scheduler(self, sampler, **options):
        """The diffusers scheduler ``sampler`` on this objective's process
        (:meth:`scheduler_overrides`) with the sampler ``options`` (its constructor's
        settings, checked by :meth:`check_sample_options`; numpy's bools as Python's)."""
        return build_noise_scheduler(sampler, **{**self.scheduler_overrides(sampler),
                                                 **scheduler_option_values(options)})

    def scheduler_overrides(self, sampler):
        """Give a diffusers scheduler this objective's own betas (linear, cosine, ...),
        and ``DDPMScheduler`` its fixed variance (:func:`ddpm_variance_type`:
        ``sigma_small``'s posterior variance or beta, as the ``'ddpm'`` sampler steps;
        a learned one: the posterior's, the loop hands it epsilon alone). The sampler's
        options (``variance_type=...``) replace these."""
        overrides = dict(num_train_timesteps=self.original_num_steps)
        if 'trained_betas' in scheduler_settings(sampler):
            overrides['trained_betas'] = get_named_beta_schedule(
                self._init_args['beta_schedule'], self.original_num_steps)
        if sampler == 'DDPMScheduler':  # (DPM-Solver's variance_type means another thing)
            overrides['variance_type'] = ddpm_variance_type(
                self._init_args['sigma_small'], self._init_args['learn_sigma'])
        return overrides

    def __repr__(self):
        args = ', '.join(f'{k}={v!r}' for k, v in self._init_args.items())
        return f'{type(self).__name__}({args}, timestep_respacing={self.timestep_respacing!r})'


def _infer_device(model, noise, generator):
    """Device for a sampling loop: the noise's, the model's, the generator's, or CPU."""
    if noise is not None:
        return noise.device
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        if param is not None:
            return param.device
    if isinstance(generator, torch.Generator):
        return generator.device
    return torch.device('cpu')

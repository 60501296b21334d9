"""Integrators for transport sampling: ODE (Euler, Heun, dopri5) and SDE
(Euler-Maruyama, Heun), as SiT's ``transport/integrators.py`` (Ma et al. 2024,
"SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant
Transformers").

Each integrator takes ``drift(x, t)`` with ``t`` a (N,) tensor and integrates forward
in time from ``t0`` to ``t1``. The SDE is
``dx = drift(x, t) dt + sqrt(2 * diffusion(x, t)) dW``, SiT's form.
"""
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from mmsora.utils import sample_rng

__all__ = ['ode_fixed_step', 'ode_adaptive', 'sde_fixed_step', 'shift_times', 'time_grid']


def shift_times(u, shift):
    """Times ``u`` in [0, 1] (1 = data) whose noise level ``s = 1 - u`` is shifted to
    ``shift * s / (1 + (shift - 1) * s)`` (SD3's shift, Esser et al. 2024 eq. 23;
    Open-Sora 1.2's ``timestep_transform``): ``shift`` > 1 moves every time toward the
    noise end, keeping both ends. A tensor or a float."""
    if shift == 1:
        return u
    s = 1 - u
    return 1 - shift * s / (1 + (shift - 1) * s)


def time_grid(t0: float, t1: float, num_points: int, shift: float = 1.0):
    """``linspace(t0, t1, num_points)`` as floats, its points' place in [t0, t1]
    shifted by :func:`shift_times`."""
    if shift == 1:
        return torch.linspace(t0, t1, num_points, dtype=torch.float64).tolist()
    u = shift_times(torch.linspace(0, 1, num_points, dtype=torch.float64), shift)
    return (t0 + (t1 - t0) * u).tolist()


def _t_batch(t, x):
    """Time ``t`` as a (N,) tensor for state ``x`` (a tensor or a tuple of tensors)."""
    x = x[0] if isinstance(x, tuple) else x
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def _add(x, dt, k):
    """``x + dt * k`` for a tensor or a tuple of tensors."""
    if isinstance(x, tuple):
        return tuple(a + dt * b for a, b in zip(x, k))
    return x + dt * k


def ode_fixed_step(drift: Callable, x, t0: float, t1: float, num_steps: int,
                   method: str = 'euler', progress: bool = False, shift: float = 1.0):
    """Integrate ``dx/dt = drift(x, t)`` with ``num_steps`` equal steps (on the grid
    of :func:`time_grid` with ``shift``).

    Args:
        drift: ``drift(x, t) -> dx/dt``.
        x: State at ``t0``: a tensor, or a tuple of tensors (an augmented state).
        t0, t1: Start and end times.
        num_steps: Number of steps (Euler: one drift evaluation each; Heun: two).
        method: ``'euler'`` or ``'heun'`` (explicit trapezoid, torchdiffeq's
            ``heun2``).
        progress: Show a progress bar.
        shift: Shift of the grid (:func:`shift_times`; 1: equal steps).

    Returns:
        The state at ``t1``.
    """
    ts = time_grid(t0, t1, num_steps + 1, shift)
    for t_cur, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc=f'ode {method}',
                              disable=not progress):
        dt = t_next - t_cur
        k1 = drift(x, _t_batch(t_cur, x))
        if method == 'euler':
            x = _add(x, dt, k1)
        else:
            k2 = drift(_add(x, dt, k1), _t_batch(t_next, x))
            x = _add(x, 0.5 * dt, _add(k1, 1.0, k2))
    return x


def ode_adaptive(drift: Callable, x: torch.Tensor, t0: float, t1: float,
                 method: str = 'dopri5', atol: float = 1e-6, rtol: float = 1e-3):
    """Integrate ``dx/dt = drift(x, t)`` with an adaptive torchdiffeq solver.

    ``x`` may be a tuple of tensors (an augmented state, e.g. with a log-density);
    SiT's defaults ``atol=1e-6, rtol=1e-3``.
    """
    try:
        from torchdiffeq import odeint
    except ImportError:
        raise ImportError("the adaptive ODE sampler needs torchdiffeq: pip install "
                          "torchdiffeq (listed in requirements/optional.txt)") from None
    first = x[0] if isinstance(x, tuple) else x

    def fn(t, state):
        return drift(state, _t_batch(t, state))

    ts = torch.tensor([t0, t1], device=first.device, dtype=first.dtype)
    out = odeint(fn, x, ts, method=method, atol=atol, rtol=rtol)
    return tuple(o[-1] for o in out) if isinstance(x, tuple) else out[-1]


def sde_fixed_step(drift: Callable, diffusion: Callable, x: torch.Tensor, t0: float,
                   t1: float, num_points: int, method: str = 'euler',
                   generators: Optional[Sequence[torch.Generator]] = None,
                   progress: bool = False, shift: float = 1.0) -> torch.Tensor:
    """Integrate SiT's SDE on ``linspace(t0, t1, num_points)`` (``num_points - 1`` steps;
    the grid of :func:`time_grid` with ``shift``).

    Args:
        drift: ``drift(x, t)``, the SDE drift.
        diffusion: ``diffusion(x, t)``; the noise term is ``sqrt(2 * diffusion) dW``.
        x: State at ``t0``.
        num_points: Grid points, as SiT's ``num_steps`` (the last step to ``t = 1``
            is taken by the caller).
        method: ``'euler'`` (Euler-Maruyama; one drift evaluation per step) or
            ``'heun'`` (noise first, then a Heun drift step; two evaluations).
        generators: One generator per sample for the Brownian increments.
        shift: Shift of the grid (:func:`shift_times`; 1: equal steps).

    Returns:
        The state at ``t1``.
    """
    ts = time_grid(t0, t1, num_points, shift)
    for t_cur, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc=f'sde {method}',
                              disable=not progress):
        dt = t_next - t_cur
        t = _t_batch(t_cur, x)
        dw = sample_rng.sampling_noise(x.shape, generators, x.device, x.dtype) * dt**0.5
        if method == 'euler':
            x = x + drift(x, t) * dt + torch.sqrt(2 * diffusion(x, t)) * dw
        else:
            x_hat = x + torch.sqrt(2 * diffusion(x, t)) * dw
            k1 = drift(x_hat, t)
            k2 = drift(x_hat + dt * k1, t + dt)
            x = x_hat + 0.5 * dt * (k1 + k2)
    return x

"""The random draws of a training step, optionally keyed per sample.

A training step draws, per sample, a timestep, the noise and whether its label or
caption is dropped (for classifier-free guidance). By default these come from torch's
global generator, batch by batch, so each process draws for the part of the global
batch it holds: the draws, and so the loss, depend on how many processes share the
batch (DiT seeds each process with ``seed * world_size + rank``).

Inside :func:`per_sample_generators` every draw made through this module gives sample
``i`` values from its own CPU generator ``generators[i]``. LatentDiffusion seeds them
with :func:`sample_seeds` from a fixed seed, the iteration and the sample's place in
the global batch, so a sample gets the same timestep, noise and label drop whether the
batch runs on one process or is split over many (``LatentDiffusion(train_noise_seed=...)``).

The draw sites (the objectives' ``loss``, the label / caption embedders' dropout, the
VAE wrapper's posterior sample when latents are encoded on the fly) call
:func:`rand`, :func:`randn_like` and :func:`randint` here; outside the context they are
exactly ``torch.rand`` / ``torch.randn_like`` / ``torch.randint``.
"""
import contextlib
import numbers
from typing import List, Optional, Sequence

import torch

__all__ = ['per_sample_generators', 'sample_seeds', 'make_generators', 'randn_per_sample',
           'sampling_noise', 'rand', 'randn', 'randn_like', 'randint', 'seed_list']

# A plain module global, not a ContextVar: torch.compile (Dynamo) traces a global
# read, a ContextVar.get() breaks the graph. Training steps do not run concurrently in
# one process.
_GENERATORS: Optional[List[torch.Generator]] = None
_MASK64 = (1 << 64) - 1


@contextlib.contextmanager
def per_sample_generators(generators: Sequence[torch.Generator]):
    """Draw through this module from one generator per sample (CPU generators)."""
    global _GENERATORS
    previous, _GENERATORS = _GENERATORS, list(generators)
    try:
        yield
    finally:
        _GENERATORS = previous


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seeds(seed: int, step: int, positions: Sequence[int]) -> List[int]:
    """One 63-bit seed per sample, a hash of ``(seed, step, position)``."""
    base = _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(step) & _MASK64))
    return [_splitmix64(base ^ (int(p) & _MASK64)) >> 1 for p in positions]


def make_generators(seeds: Sequence[int]) -> List[torch.Generator]:
    """CPU generators seeded with ``seeds``."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def randn_per_sample(generators: Sequence[torch.Generator], shape: Sequence[int],
                     device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(generators), *shape[1:]) standard normal noise, row i from generators[i]
    (CPU generators), so a sample's noise does not depend on the batch it is in."""
    return _per_sample(generators,
                       lambda g: torch.randn(tuple(shape[1:]), generator=g, dtype=dtype),
                       device)


def sampling_noise(shape: Sequence[int], generator=None, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise for a sampling loop, drawn from ``generator`` when one is given.

    ``generator`` may also be a list with one (CPU) generator per batch element, so
    each sample's noise depends on its own seed only, whatever batch it is drawn in.
    Unlike :func:`randn`, it ignores :func:`per_sample_generators` (a training context).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f'{len(generator)} generators for a batch of {shape[0]}')
        return randn_per_sample(generator, shape, device, dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _active(n: int) -> Optional[List[torch.Generator]]:
    gens = _GENERATORS
    if gens is not None and len(gens) != n:
        raise ValueError(f'a draw for {n} samples inside per_sample_generators with '
                         f'{len(gens)} generators: the batch changed size inside the step')
    return gens


def _per_sample(gens, draw, device):
    return torch.stack([draw(g) for g in gens]).to(device)


def rand(n: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.rand(n)``: uniform [0, 1), one value per sample."""
    gens = _active(n)
    if gens is None:
        return torch.rand(n, device=device, dtype=dtype)
    return _per_sample(gens, lambda g: torch.rand((), generator=g, dtype=dtype), device)


def randn(shape: Sequence[int], device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.randn(shape)``; ``shape[0]`` is the batch."""
    shape = tuple(shape)
    gens = _active(shape[0])
    if gens is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return randn_per_sample(gens, shape, device, dtype)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.randn_like(x)``; ``x``'s first axis is the batch."""
    if _GENERATORS is None:
        return torch.randn_like(x)
    return randn(x.shape, x.device, x.dtype)


def randint(high: int, n: int, device=None) -> torch.Tensor:
    """``torch.randint(0, high, (n,))``."""
    gens = _active(n)
    if gens is None:
        return torch.randint(0, high, (n,), device=device)
    return _per_sample(gens, lambda g: torch.randint(0, high, (), generator=g), device)


def seed_list(seeds, n: int, what: str = 'samples') -> list:
    """The seeds of ``n`` samples (``LatentDiffusion.sample``'s and
    :func:`~mmsora.apis.inference.sample_images`'): one whole number per sample, or
    an int ``s`` for ``s, s + 1, ...`` (infer's ``--seed s``); ``what`` the samples
    are named by in the count's message (``'labels'``, ``'prompts'``)."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return list(range(int(seeds), int(seeds) + n))
    try:
        if isinstance(seeds, (str, bytes)):
            raise TypeError
        values = seeds.tolist() if torch.is_tensor(seeds) else list(seeds)
        if any(isinstance(s, (bool, str, bytes)) or float(s) != int(s) for s in values):
            raise ValueError  # (1.5 was taken as seed 1)
        values = [int(s) for s in values]
    except (TypeError, ValueError, OverflowError):  # ('object of type float has no len()')
        raise ValueError(f'seeds must be one whole number per sample (or an int s: seeds '
                         f's, s + 1, ...), got {seeds!r}') from None
    if len(values) != n:
        raise ValueError(f'got {len(values)} seeds for {n} {what}: give one seed per '
                         'sample (or an int s: seeds s, s + 1, ...)')
    return values

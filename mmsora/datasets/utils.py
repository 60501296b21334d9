"""Small helpers shared by the datasets: seeds, per-process RNGs, natural sort."""
import os
import re

import numpy as np
import torch

__all__ = ['draw_seed', 'WorkerRNGMixin', 'natural_sort_key']


def draw_seed(seed=None):
    """Return ``seed`` as an int, or draw one from torch's global RNG when None.

    Drawing from torch (which mmengine seeds with ``randomness.seed``) makes a run
    reproducible without the config naming a dataset seed.
    """
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ()).item())
    return int(seed)


def _dist_rank():
    """Rank in the default process group, 0 when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class WorkerRNGMixin:
    """Gives a dataset a lazily built, per-process ``np.random.Generator``.

    The generator is created on the first draw in each process (main process or
    DataLoader worker) and seeded from ``(seed, rank, worker_id)``. Datasets never
    touch the global torch/numpy RNGs, so the data stream depends only on ``seed`` and
    the order of indices asked for: a resumed run that replays the same indices
    replays the same draws. The rank is mixed in so that DDP ranks do not draw the
    same noise for different items. Subclasses set ``self.seed`` in ``__init__``.
    """

    _rng = None
    _rng_pid = None

    @property
    def rng(self):
        """The generator of the current process, created on first use."""
        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:
            info = torch.utils.data.get_worker_info()
            worker_id = info.id if info is not None else 0
            ss = np.random.SeedSequence([self.seed, _dist_rank(), worker_id])
            self._rng = np.random.Generator(np.random.PCG64(ss))
            self._rng_pid = pid
        return self._rng

    def __getstate__(self):
        # A generator must not travel to a spawned worker: each builds its own.
        state = self.__dict__.copy()
        state.pop('_rng', None)
        state.pop('_rng_pid', None)
        return state


def natural_sort_key(name):
    """Key that sorts ``'2.npy'`` before ``'10.npy'`` (numbers compared as numbers)."""
    return [(0, int(tok), '') if tok.isdigit() else (1, 0, tok)
            for tok in re.split(r'(\d+)', name) if tok]

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
    DataLoader worker) and never touches the global torch/numpy RNGs. It is seeded
    from ``(seed, rank, worker_id)`` and, in a DataLoader worker, from the worker's
    torch seed (``get_worker_info().seed``: the base seed torch draws from the main
    process's RNG, or the loader's ``generator``, for each new iterator, plus the
    worker id):

    * ``rank``: DDP ranks do not draw the same noise for different items.
    * ``worker_id``: the workers of one iterator draw different streams.
    * the worker's torch seed: a loader without ``persistent_workers`` starts new
      workers for every iterator (every epoch); seeded from ``(seed, rank,
      worker_id)`` alone they replayed the same clip starts, crops, flips and
      posterior noise every epoch. The base seed differs for each iterator and is a
      function of the main process's RNG state, which ``randomness.seed`` fixes, so a
      run is still reproducible from its seeds.

    In the main process (``num_workers=0``) the generator is seeded from ``(seed,
    rank, 0)`` and persists across epochs, as do persistent workers' generators.
    Exact resume: an iteration-based run with an infinite sampler (every mmsora
    config) builds its single iterator before the checkpoint is loaded, from the same
    RNG state as the uninterrupted run, and mmengine replays the trained batches
    through it, so the streams continue where they stopped. An iterator made later
    (a finite sampler's next epoch) takes its base seed from the RNG state of that
    moment, which a resume restores (``RNGStateHook``) only at its first training
    iteration: where such an epoch starts during the replay or at that iteration, the
    resumed run draws other augmentations than the uninterrupted one from there on.
    Subclasses set ``self.seed`` in ``__init__``.
    """

    _rng = None
    _rng_pid = None

    @property
    def rng(self):
        """The generator of the current process, created on first use."""
        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:
            info = torch.utils.data.get_worker_info()
            entropy = [self.seed, _dist_rank(), 0]
            if info is not None:  # a worker: new for each iterator unless persistent
                entropy = [self.seed, _dist_rank(), info.id, info.seed]
            ss = np.random.SeedSequence(entropy)
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

"""WorkerRNGMixin across epochs: a loader without persistent workers starts new
workers for every iterator; they drew the same clip starts, crops, flips and noise
every epoch (seeded from (seed, rank, worker_id) alone). Now each iterator's workers
also mix in torch's base seed of that iterator, drawn from the main process's RNG."""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmsora.datasets import WorkerRNGMixin

ITEMS = 4


class Draws(WorkerRNGMixin, Dataset):
    """Item i is one draw from the dataset's per-process generator."""

    def __init__(self, seed):
        self.seed = seed

    def __len__(self):
        return ITEMS

    def __getitem__(self, idx):
        return self.rng.random()


def epochs(loader, n=2):
    """The draws of ``n`` epochs (one iterator each) of ``loader``, by position."""
    return [torch.cat(list(loader)).tolist() for _ in range(n)]


def worker_loader(seed=0, persistent=False):
    # batch 0 (items 0, 1) goes to worker 0, batch 1 (items 2, 3) to worker 1
    return DataLoader(Draws(seed), batch_size=2, num_workers=2, shuffle=False,
                      persistent_workers=persistent)


def test_epochs_of_non_persistent_workers_draw_differently():
    torch.manual_seed(0)
    first, second = epochs(worker_loader())
    assert len(set(first)) == ITEMS  # the two workers draw different streams
    # every item gets other draws in the next epoch (was: the same, position by position)
    assert all(a != b for a, b in zip(first, second)), (first, second)


def test_the_same_seeds_give_the_same_draws():
    def run(torch_seed, seed=0):
        torch.manual_seed(torch_seed)  # what mmengine's randomness.seed does
        return epochs(worker_loader(seed))

    reference = run(0)
    assert run(0) == reference  # a fresh loader, the same seeds: the same two epochs
    assert run(0, seed=1) != reference  # the dataset's seed still counts
    assert run(1) != reference  # and so does the run's (torch's base seed)


def test_persistent_workers_draw_differently_each_epoch():
    torch.manual_seed(0)
    first, second = epochs(worker_loader(persistent=True))
    assert all(a != b for a, b in zip(first, second)), (first, second)


def test_the_main_process_stream_is_unchanged():
    """num_workers=0: one generator seeded from (seed, rank, 0), kept across epochs
    and independent of torch's global RNG."""
    loader = DataLoader(Draws(7), batch_size=2, shuffle=False)
    torch.manual_seed(0)
    first = epochs(loader, 1)[0]
    torch.manual_seed(1)  # another global state does not change the stream
    second = epochs(loader, 1)[0]
    expected = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 0, 0])))
    np.testing.assert_array_equal(first + second, expected.random(2 * ITEMS))

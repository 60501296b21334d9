"""Skip and count unreadable items of any dataset, when a config asks for it.

By default a corrupt sample stops training with one line naming the file and the
item (every mmsora dataset raises so). Wrapping the dataset in
``SkipCorruptDataset`` trades that for availability: on a week-long run over
millions of files, a few broken ones are logged, counted and replaced instead.
"""
import logging

from mmengine.logging import print_log
from torch.utils.data import Dataset

from mmsora.registry import DATASETS
from .video_dataset import SKIP_HINT

__all__ = ['SkipCorruptDataset', 'READ_ERRORS']

# What datasets raise for an unreadable item: missing files (OSError), corrupt
# .npy/.jpg/.mp4 (ValueError, which VideoReadError is), files cut short (EOFError).
READ_ERRORS = (OSError, ValueError, EOFError)


def _said(error) -> str:
    """An item's error as this wrapper's messages say it: without a ``VideoDataset``'s
    advice to skip such videos (``SKIP_HINT``, the way on where the error ends the
    run), which its warnings gave for a video it was skipping already (and with a key
    path that is not the wrapped dataset's)."""
    return str(error).replace(f'; {SKIP_HINT}', '')


@DATASETS.register_module()
class SkipCorruptDataset(Dataset):
    """Wraps a dataset; an item that cannot be read is replaced by the next readable
    one, with a warning, and counted.

    The replacement is the next index (wrapping around), so it does not depend on
    timing or on the worker that reads it: a resumed run skips the same way as an
    uninterrupted one. Counts are per process (each data-loader worker logs its own).

    Args:
        dataset (dict | Dataset): The dataset, or its config.
        max_skipped (int, optional): Stop with an error once more than this many
            distinct items were skipped in one process (a wrong folder, a full
            disk): skipping is for a few broken files, not for broken data.
            None: no limit. Defaults to 100.
    """

    def __init__(self, dataset, max_skipped=100):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if max_skipped is not None and int(max_skipped) < 0:
            raise ValueError(f'max_skipped must be >= 0 or None, got {max_skipped}')
        self.max_skipped = None if max_skipped is None else int(max_skipped)  # (a config's '100')
        self.metainfo = getattr(self.dataset, 'metainfo', {})
        self.num_skipped = 0
        self._bad = set()

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        # Attributes of the wrapped dataset (latent_shape, classes, ...) stay visible.
        if name == 'dataset':  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, idx):
        n = len(self)
        for step in range(n):
            j = (idx + step) % n
            if j in self._bad:
                continue
            try:
                return self.dataset[j]
            except READ_ERRORS as e:
                self._bad.add(j)
                self.num_skipped += 1
                if self.max_skipped is not None and self.num_skipped > self.max_skipped:
                    raise ValueError(
                        f'more than max_skipped={self.max_skipped} unreadable items; the '
                        f'last: {_said(e)}') from None
                print_log(f'skipping unreadable item {j}: {_said(e)} ({self.num_skipped} '
                          'skipped in this process)', logger='current',
                          level=logging.WARNING)
        raise ValueError(f'none of the {n} items of {type(self.dataset).__name__} is '
                         'readable')

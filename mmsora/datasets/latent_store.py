"""Reader of a packed latent store (:class:`LatentStore`), by memory map.

The store's code, by what it holds: ``store_format`` (the layout, header keys, file
names, dtype encoding), ``latent_store_writer`` (:class:`LatentStoreWriter`),
``store_records`` (the index and parts against a run's settings, a rerun's progress),
``shard_files`` (the cheap check of a shard's files), ``store_folder`` (what a folder
given as a store holds) and ``store_lock`` (one writing run at a time).
"""
import os.path as osp

import numpy as np
import torch

from .shard_files import _load_shard_file, damaged_shard, repair_advice
from .store_folder import _what_is_there
from .store_format import FORMAT, VERSION, _read_json, decode_dtype, stored_tensor

__all__ = ['LatentStore', 'locate']


# --------------------------------------------------------------------------- #
#                                    Reader                                    #
# --------------------------------------------------------------------------- #
def locate(offsets, idx, within):
    """``(part, index in it)`` of item ``idx`` (negative: from the end) of parts that
    start at ``offsets`` (cumulative counts from 0); ``within`` names the whole."""
    n = int(offsets[-1])
    if idx < 0:
        idx += n
    if not 0 <= idx < n:
        raise IndexError(f'item {idx} out of range for {within} of {n} items')
    i = int(np.searchsorted(offsets, idx, side='right')) - 1
    return i, idx - int(offsets[i])


class LatentStore:
    """Memory-mapped reader of a packed latent store.

    ``store[i]`` is a float32 array ``(num_copies, K, *latent_shape)``; shards are
    opened with ``np.load(mmap_mode='r')`` on first touch in each process, so nothing
    is read until asked for. Labels of all items are loaded up front (8 bytes each).

    Args:
        root (str): Store folder holding ``index.json``.
        allow_incomplete (bool): Read a store whose extraction has not finished
            (some shards missing). Defaults to False.
    """

    def __init__(self, root, allow_incomplete=False):
        path = osp.join(root, 'index.json')
        if not osp.isfile(path):
            raise FileNotFoundError(f'no latent store index {path!r}{_what_is_there(root)}')
        index = _read_json(path)
        if index.get('format') != FORMAT or index.get('version') != VERSION:
            raise ValueError(f'{path!r} is not a {FORMAT} v{VERSION} index')
        if not index['complete'] and not allow_incomplete:
            raise ValueError(f'latent store {root!r} is incomplete ({len(index["shards"])}'
                             f' of {index["num_shards"]} shards); finish the extraction '
                             f'or pass allow_incomplete=True')
        self.root, self.index = root, index
        self.dtype = index['dtype']
        self.content = index['content']
        self.num_copies = index['num_copies']
        self.latent_shape = tuple(index['latent_shape'])
        self.scale_factor = index['scale_factor']
        self.shards = [s for s in index['shards'] if s['count'] > 0]
        self.repair = repair_advice(root, index)  # (what mends a damaged file)
        self._check_files()
        counts = np.array([s['count'] for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.labels = np.concatenate(
            [self._load_labels(s) for s in self.shards] or [np.zeros(0, np.int64)])
        self.text_shape = tuple(index['text_shape']) if index.get('text_shape') else None
        self.pooled_dim = index.get('pooled_dim')
        self._arrays = {}

    def _check_files(self):
        """Refuse a store with a shard file cut short or missing, naming it, before
        training starts (a stat and a header read a file: no data is read). Before, a
        run met it when it first read the shard, hours in on a large store."""
        damaged = [found for found in (damaged_shard(self.root, s, self.index)
                                       for s in self.shards) if found]
        if not damaged:
            return
        name, what, detail = damaged[0]
        path = osp.join(self.root, name)
        others = (f'; {len(damaged)} of {len(self.shards)} shards are damaged: '
                  + ', '.join(f[0] for f in damaged[:10]) + (' ...' if len(damaged) > 10
                                                             else '')
                  if len(damaged) > 1 else '')
        if what == 'missing':
            raise FileNotFoundError(f'latent store file missing: {path!r}{others}; '
                                    f'{self.repair}')
        raise ValueError(f'cannot read latent store file {path!r}: it is truncated or '
                         f'damaged ({what}: {detail}){others}; {self.repair}')

    def _load_labels(self, shard):
        path = osp.join(self.root, shard['labels_file'])
        labels = _load_shard_file(path, None, self.repair)
        if labels.shape != (shard['count'],):
            raise ValueError(f'{path!r} has shape {labels.shape}, index says '
                             f'({shard["count"]},)')
        return labels.astype(np.int64, copy=False)

    def __len__(self):
        return int(self.offsets[-1])

    def shard_array(self, i, field=None):
        """Memory map of the ``i``-th non-empty shard (or of one of its text fields)."""
        arr = self._arrays.get((i, field))
        if arr is None:
            shard = self.shards[i]
            path = osp.join(self.root, shard['text_files'][field] if field else shard['file'])
            arr = _load_shard_file(path, 'r', self.repair)
            if arr.shape[0] != shard['count']:
                raise ValueError(f'{path!r} holds {arr.shape[0]} items, index says '
                                 f'{shard["count"]}')
            self._arrays[(i, field)] = arr
        return arr

    def locate(self, idx):
        """``(shard position, row)`` of global item ``idx``."""
        return locate(self.offsets, idx, 'a store')

    def __getitem__(self, idx):
        return self.read(idx)

    def read(self, idx, copy=None):
        """Item ``idx`` in float32: ``(num_copies, K, *latent_shape)``, or with
        ``copy`` that copy alone, ``(K, *latent_shape)`` (the others not decoded)."""
        i, row = self.locate(idx)
        stored = self.shard_array(i)[row]
        return decode_dtype(stored if copy is None else stored[copy], self.dtype)

    def item_name(self, idx):
        """Where item ``idx`` is kept, for messages: ``'ROOT/shard_00003.npy row 17'``
        (a NaN loss's warning names the batch's items so: LossGuardHook)."""
        i, row = self.locate(idx)
        return f'{osp.join(self.root, self.shards[i]["file"])} row {row}'

    def text(self, idx, decode=True):
        """Item ``idx``'s text fields, or None if no text is kept.

        Args:
            idx (int): Item index.
            decode (bool): Give float32 / bool numpy arrays; if False, torch tensors
                with the embeddings in the store's dtype (what a loader hands to the
                device, where the model casts them: a T5-XXL item is 1 MB in float16,
                2 MB in float32). Defaults to True.

        Returns:
            dict | None: ``text_embeds`` (L, D), ``text_mask`` (L,) and, when kept,
            ``pooled_text_embeds`` (D2,).
        """
        if self.text_shape is None:
            return None
        i, row = self.locate(idx)
        out = {}
        for field in self.shards[i]['text_files']:
            value = self.shard_array(i, field)[row]
            if field == 'text_mask':
                value = np.array(value, dtype=bool)
                out[field] = value if decode else torch.from_numpy(value)
            else:
                out[field] = (decode_dtype(value, self.dtype) if decode
                              else stored_tensor(value, self.dtype))
        return out

    def __getstate__(self):
        # Memory maps would be pickled as full copies: reopen them in the new process.
        state = self.__dict__.copy()
        state['_arrays'] = {}
        return state

"""Writer of a packed latent store (:class:`LatentStoreWriter`), one shard at a time,
resumably, by one or several processes; the format: :mod:`mmsora.datasets.store_format`."""
import glob
import json
import os
import os.path as osp

import numpy as np
import torch

from mmsora.utils.atomic_io import atomic_file, atomic_write_bytes, tmp_target
from mmsora.utils.labels import check_label_range
from .shard_files import sound_records
from .store_format import (CONTENTS, DTYPES, FINGERPRINT_KEY, FORMAT, TEXT_FILES, VERSION,
                           _read_json, encode_dtype, labels_name, nonfinite_stored,
                           shard_name, text_name)
from .store_records import (_covered_by_index, _store_files, _vouching_index,
                            check_recorded, later_keys_lacking, recorded_layer_form)

__all__ = ['LatentStoreWriter']


# --------------------------------------------------------------------------- #
#                                 File helpers                                 #
# --------------------------------------------------------------------------- #
def _atomic_save_npy(path, array):
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)


def _atomic_save_json(path, obj):
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


# --------------------------------------------------------------------------- #
#                                    Writer                                    #
# --------------------------------------------------------------------------- #
class LatentStoreWriter:
    """Writes a packed latent store, one shard at a time, resumably.

    Several processes (torchrun ranks) may write one store: rank ``r`` of ``w`` owns
    shards ``k`` with ``k % w == r`` and records them in ``parts/rank-{r:05d}.json``.
    After all ranks are done (a barrier), one process calls :meth:`finalize`, which
    merges every part into ``index.json``.

    Args:
        root (str): Store folder (created if missing).
        num_source_items (int): Number of source items (e.g. images) to encode.
        latent_shape (tuple[int]): Shape of one latent, ``(C, H, W)`` or ``(C, T, H, W)``.
        dtype (str): 'float16', 'bfloat16' or 'float32'. Defaults to 'float16'.
        content (str): 'moments' or 'samples'. Defaults to 'moments'.
        num_copies (int): 1, or 2 with horizontally flipped copies. Defaults to 1.
        scale_factor (float): VAE scale factor the latents are multiplied by.
        shift_factor (float): VAE shift subtracted before scaling. Defaults to 0.
        vae (str): Where the latents came from (a VAE path or name), for the record.
        shard_size (int): Source items per shard. Defaults to 4096.
        rank (int): This writer's rank. Defaults to 0.
        world_size (int): Number of writers. Defaults to 1.
        meta (dict, optional): Free-form JSON-able extras (classes, image size, ...).
            Into a store of an older mmsora whose record lacks some of
            :data:`LATER_META_KEYS`, those are recorded by the shards written alone.
        text_shape (tuple[int], optional): ``(L, D)`` of each item's text-encoder
            tokens when the store keeps text embeddings (stored in ``dtype``, with a
            bool token mask). Defaults to None (no text).
        pooled_dim (int, optional): Width of each item's pooled text embedding (CLIP),
            when kept. Defaults to None.
        source_fingerprint (str, optional): A digest of the source items (their paths,
            captions, labels, in order), recorded: a resumed writer whose items are
            other ones of the same number is refused (:class:`SourceChangedError`).
            Checked only where both this writer and the store have one; a store begun
            without one (by an older mmsora) is not given it. Defaults to None.
        checked (set, optional): :func:`read_store_progress`'s ``checked``: the
            records whose files it found sound, not checked again (an extraction rerun
            read every finished shard's files there, then here). Defaults to None.
    """

    def __init__(self, root, num_source_items, latent_shape, dtype='float16',
                 content='moments', num_copies=1, scale_factor=0.18215, shift_factor=0.0,
                 vae='', shard_size=4096, rank=0, world_size=1, meta=None,
                 text_shape=None, pooled_dim=None, source_fingerprint=None,
                 checked=None):
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
        if content not in CONTENTS:
            raise ValueError(f'content must be one of {CONTENTS}, got {content!r}')
        if num_copies not in (1, 2):
            raise ValueError(f'num_copies must be 1 or 2, got {num_copies!r}')
        if num_source_items < 1 or shard_size < 1:
            raise ValueError(f'need num_source_items >= 1 and shard_size >= 1, got '
                             f'{num_source_items} and {shard_size}')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} is not in [0, {world_size})')
        self.root = root
        self.rank, self.world_size = rank, world_size
        self.header = dict(
            format=FORMAT, version=VERSION, dtype=dtype,
            latent_shape=[int(s) for s in latent_shape], content=content,
            num_copies=int(num_copies), scale_factor=float(scale_factor),
            shift_factor=float(shift_factor), vae=str(vae), shard_size=int(shard_size),
            num_source_items=int(num_source_items),
            num_shards=-(-int(num_source_items) // int(shard_size)),
            text_shape=[int(s) for s in text_shape] if text_shape else None,
            pooled_dim=int(pooled_dim) if pooled_dim else None)
        # Compared with the store's; recorded (in the header) as _kept_record says.
        self.fingerprint = str(source_fingerprint) if source_fingerprint else None
        if pooled_dim and not text_shape:
            raise ValueError('pooled_dim needs text_shape (the token embeddings)')
        self.meta = meta or {}
        self.item_shape = (int(num_copies), 2 if content == 'moments' else 1,
                           *self.header['latent_shape'])
        os.makedirs(root, exist_ok=True)  # parts/ at the first shard: a run that fails
        # before it leaves no sign of a store begun
        self.part_path = osp.join(root, 'parts', f'rank-{rank:05d}.json')
        # Shards this writer has finished (kept from an earlier run of the same rank
        # id, even if they are not ours under the current world size).
        self.own = {}
        self.damaged = {}  # {id: damaged_shard(...)}: what done_shards() found
        self.checked = set(checked or ())  # record_key() of the records found sound
        if osp.exists(self.part_path):
            part = _read_json(self.part_path)
            self._check_header(part, self.part_path)
            self.own = {int(s['id']): s for s in part['shards']}
        self.store_meta, self.shard_meta, fingerprint = self._kept_record()
        if fingerprint:
            self.header[FINGERPRINT_KEY] = fingerprint
        self._remove_stray_temps()

    # ------------------------------------------------------------------ state
    @property
    def num_shards(self):
        return self.header['num_shards']

    def _check_header(self, other, path):
        check_recorded(self.root, other, path, {**self.header, FINGERPRINT_KEY: self.fingerprint},
                       self.meta)

    def _kept_record(self):
        """``(store meta, shard meta, fingerprint)``: the ``meta`` the index and parts
        record, what each shard this writer writes records besides (``meta`` in its
        record), and the ``source_fingerprint`` the index and parts record (None: none).

        A store begun by an older mmsora records none of the later settings
        (:data:`LATER_META_KEYS`): its shards may hold any value of them, so its
        record keeps them unknown, and the shards written now record this run's
        values of them alone. Before, a rerun that wrote a damaged shard of such a
        store again (or resumed one) wrote this run's meta over the old: the index
        said every shard was written with this run's settings.

        Likewise a store begun without a source fingerprint keeps none: its shards
        may come from other source items. Before, a rerun recorded its own in the
        index and parts: it said the older shards came from this run's items, which
        nothing checked, and a later run with their true items was refused.

        A hidden layer the store records as the other index of this run's (CLIP-L's -2
        against 11: one hidden state) is kept as recorded (:func:`recorded_layer_form`):
        the store's files say one value, which a rerun or training reads where the
        text encoder's folder is not at hand to count its layers."""
        meta = json.loads(json.dumps(self.meta))
        lacking, fingerprint = set(), self.fingerprint
        for path in _store_files(self.root):
            recorded = _read_json(path)
            lacking.update(later_keys_lacking(meta, recorded))
            meta = recorded_layer_form(recorded, meta)
            if not recorded.get(FINGERPRINT_KEY):
                fingerprint = None
        return ({k: v for k, v in meta.items() if k not in lacking},
                {k: meta[k] for k in sorted(lacking)}, fingerprint)

    def done_shards(self):
        """``{shard_id: record}`` of every finished shard, from all parts and the index.

        A recorded shard whose files are cut short or missing (:func:`damaged_shard`:
        a stat and a header read a file) is not finished: it is pending again, and
        :meth:`finalize` leaves it out (the store is incomplete until it is written
        again). Before, a rerun kept it, and training met it hours in. A record found
        sound once (here or in ``checked``) is not checked again: a rerun read every
        finished shard's files for its pending shards and again for its index."""
        records = {}
        for path in _store_files(self.root):
            info = self.own if path == self.part_path else None
            if info is None:
                data = _read_json(path)
                self._check_header(data, path)
                info = {int(s['id']): s for s in data['shards']}
            for k, shard in info.items():
                records.setdefault(k, []).append(shard)
        done, self.damaged = sound_records(self.root, records, self.header,
                                           self.checked)
        return done

    def shard_range(self, shard_id):
        """``(start, stop)`` source item range of a shard."""
        size, n = self.header['shard_size'], self.header['num_source_items']
        return shard_id * size, min((shard_id + 1) * size, n)

    def owned_shards(self):
        """Shard ids this rank writes in this run."""
        return list(range(self.rank, self.num_shards, self.world_size))

    def pending_shards(self):
        """Shard ids this rank still has to write (owned and not finished)."""
        done = self.done_shards()
        return [k for k in self.owned_shards() if k not in done]

    def _remove_stray_temps(self):
        # Temp files of shards this rank owns are leftovers of a crash: only this
        # rank writes those shards now, so removing them cannot race with anyone.
        # (``shard_00002.npy.tmp.PID``: the temporary names of earlier versions.)
        owned = set(self.owned_shards())
        for name in os.listdir(self.root):
            target = tmp_target(name)
            target = target[0] if target else name.partition('.tmp.')[0]
            if not target.endswith('.npy') or target == name:
                continue
            try:
                shard_id = int(target[:-len('.npy')].rsplit('_', 1)[1])
            except (IndexError, ValueError):
                continue
            if shard_id in owned:
                os.remove(osp.join(self.root, name))

    # ------------------------------------------------------------------ writing
    def write_shard(self, shard_id, latents, labels, skipped=(), text=None, why=None,
                    finite_checked=False):
        """Write one finished shard and record it in this rank's index part.

        Latents or text embeddings holding NaN or inf as stored (a float32 value past
        float16's range is inf in a float16 store) are refused, naming the first such
        item: nothing of the shard is written then. (A caller that scanned them itself
        says so, ``finite_checked``, and they are not scanned again.)

        Args:
            shard_id (int): Which shard.
            latents (np.ndarray | torch.Tensor): ``(n, num_copies, K, *latent_shape)``
                float values (K = 2 for moments: mean, std; 1 for samples), in the
                order of the shard's source items with ``skipped`` ones left out.
            labels (Sequence[int]): ``n`` class ids.
            skipped (Sequence): Source items of this shard that could not be read
                (e.g. their file names), kept in the index for the record.
            text (dict, optional): Required when the store has ``text_shape``:
                ``text_embeds`` (n, L, D), ``text_mask`` (n, L) and, with
                ``pooled_dim``, ``pooled_text_embeds`` (n, D2).
            why (Sequence[str], optional): Why each of ``skipped`` was, kept beside it
                (``skipped_why``): a rerun's summary names the reasons too.
            finite_checked (bool): The caller has found these very values finite as
                stored (:func:`nonfinite_items`, the rule this writer refuses by), so
                they are not scanned again (about 1 s a 1024-item shard of T5-XXL
                tokens). Defaults to False.
        """
        start, stop = self.shard_range(shard_id)
        if not 0 <= shard_id < self.num_shards:
            raise ValueError(f'shard id {shard_id} is not in [0, {self.num_shards})')
        latents = encode_dtype(latents, self.header['dtype'])
        check_label_range(labels, None, f'{self.root!r} shard {shard_id}: labels',
                          error=ValueError)  # (1.5 was stored as class 1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        n = len(labels)
        if latents.shape != (n, *self.item_shape):
            raise ValueError(f'shard {shard_id}: latents have shape {latents.shape}, '
                             f'expected {(n, *self.item_shape)}')
        if n + len(skipped) != stop - start:
            raise ValueError(f'shard {shard_id}: {n} items + {len(skipped)} skipped != '
                             f'{stop - start} source items')
        text_files = self._text_arrays(shard_id, n, text)
        if not finite_checked:
            self._refuse_nonfinite(shard_id, latents, text_files)
        # Data files first, the index part last: a shard is listed only when complete.
        for name, array in text_files.items():
            _atomic_save_npy(osp.join(self.root, name), array)
        _atomic_save_npy(osp.join(self.root, labels_name(shard_id)), labels)
        _atomic_save_npy(osp.join(self.root, shard_name(shard_id)), latents)
        self.own[shard_id] = dict(
            id=shard_id, file=shard_name(shard_id), labels_file=labels_name(shard_id),
            start=start, stop=stop, count=n, skipped=[str(s) for s in skipped])
        if why is not None:
            self.own[shard_id]['skipped_why'] = [str(w) for w in why]
        if self.shard_meta:  # (settings the store's record lacks: _kept_record)
            self.own[shard_id]['meta'] = dict(self.shard_meta)
        if text_files:
            self.own[shard_id]['text_files'] = {
                field: text_name(field, shard_id) for field in TEXT_FILES
                if text_name(field, shard_id) in text_files}
        self._write_part()

    def _refuse_nonfinite(self, shard_id, latents, text_files):
        """Refuse a shard whose latents or text embeddings hold NaN or inf as stored,
        naming its first such item. Before, they were written without a word and
        PackedLatentDataset served them: training met them as a NaN loss."""
        dtype = self.header['dtype']
        found = nonfinite_stored(dict(latents=latents, **{
            field: text_files[text_name(field, shard_id)]
            for field in ('text_embeds', 'pooled_text_embeds')
            if text_name(field, shard_id) in text_files}), dtype)
        if found:
            row = min(found)
            field, count, size = found[row]
            more = f' (and {len(found) - 1} more)' if len(found) > 1 else ''
            raise ValueError(
                f'{self.root!r} shard {shard_id}: item {row}{more} holds NaN or inf in its '
                f'{field} ({count} of {size} values, as {dtype}): encode it again, or leave '
                'it out (list it in skipped): training on it meets a NaN loss')

    def _text_arrays(self, shard_id, n, text):
        """``{file name: array}`` of a shard's text fields, checked against the header."""
        text_shape, pooled_dim = self.header['text_shape'], self.header['pooled_dim']
        if text_shape is None:
            if text is not None:
                raise ValueError('this store keeps no text (text_shape=None) but text was '
                                 'given')
            return {}
        if text is None:
            raise ValueError(f'shard {shard_id}: the store keeps text (text_shape='
                             f'{text_shape}) but none was given')
        expected = dict(text_embeds=(n, *text_shape), text_mask=(n, text_shape[0]))
        if pooled_dim:
            expected['pooled_text_embeds'] = (n, pooled_dim)
        out = {}
        for field, shape in expected.items():
            value = text.get(field)
            if value is None or tuple(value.shape) != shape:
                got = None if value is None else tuple(value.shape)
                raise ValueError(f'shard {shard_id}: {field} has shape {got}, expected {shape}')
            out[text_name(field, shard_id)] = (
                np.asarray(torch.as_tensor(value).cpu(), dtype=bool) if field == 'text_mask'
                else encode_dtype(value, self.header['dtype']))
        return out

    def _write_part(self):
        os.makedirs(osp.dirname(self.part_path), exist_ok=True)
        part = dict(self.header, rank=self.rank, world_size=self.world_size,
                    meta=self.store_meta, shards=[self.own[k] for k in sorted(self.own)])
        _atomic_save_json(self.part_path, part)

    def finalize(self):
        """Merge all index parts into ``index.json``; returns the index dict.

        Call from one process once every writer is done. Idempotent. ``complete`` in
        the index says whether every shard is present.
        """
        done = self.done_shards()
        shards = [done[k] for k in sorted(done)]
        index = dict(self.header,
                     num_items=sum(s['count'] for s in shards),
                     num_skipped=sum(len(s['skipped']) for s in shards),
                     complete=len(shards) == self.num_shards,
                     meta=self.store_meta, shards=shards)
        path = osp.join(self.root, 'index.json')
        if not (osp.exists(path) and _read_json(path) == index):
            self._record_vouched_meta()  # (the parts first: a rank reading meanwhile)
            _atomic_save_json(path, index)
        return index

    def _record_vouched_meta(self):
        """Record the ``meta`` of the complete index in every part that records none
        (an older mmsora's) and whose shards it vouches for (:func:`_covered_by_index`):
        the index written next may say incomplete (a damaged shard left out), and then
        vouches for none. Before, only this writer's own part was given it: a repair
        stopped before the damaged shard was written again was refused as a half-done
        store of an older mmsora where another rank's part had none (a rerun with
        several ranks, or one process repairing a store that several wrote).

        Other ranks' parts are rewritten too (the index cannot carry the vouch: it
        leaves the damaged shard out, which such a part lists). tools/extract_features.py
        finalizes so at its start, while other ranks may encode: a rank that writes its
        part between the read and the write here has its newest shard record dropped
        until its next shard (at worst that shard is encoded again by the next run);
        the parts are written before the index, so a rank reading them meanwhile is not
        refused."""
        index = _vouching_index(self.root)
        if index is None:
            return
        for path in glob.glob(osp.join(self.root, 'parts', 'rank-*.json')):
            part = _read_json(path)
            if 'meta' not in part and _covered_by_index(self.root, part, path, index):
                shards = part.pop('shards')
                _atomic_save_json(path, dict(part, meta=index['meta'], shards=shards))

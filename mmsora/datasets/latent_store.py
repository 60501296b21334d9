"""Packed latent store: sharded ``.npy`` arrays + a JSON index, read by memory map.

Layout of a store ``root/``::

    index.json              merged index (written by ``LatentStoreWriter.finalize``)
    parts/rank-00003.json   per-writer index parts (what each writer has finished)
    shard_00000.npy         latents of shard 0: (n, num_copies, K, *latent_shape)
    labels_00000.npy        int64 class ids of shard 0: (n,)
    text_00000.npy          optional text-encoder tokens of shard 0: (n, L, D)
    text_mask_00000.npy     optional bool token mask: (n, L)
    pooled_00000.npy        optional pooled text embeddings: (n, D2) (CLIP)

``K`` is 2 for ``content='moments'`` (scaled posterior mean, scaled posterior std) and
1 for ``content='samples'`` (one scaled posterior sample). ``num_copies`` is 1, or 2
when a horizontally flipped copy of every image was encoded too (copy 0 original,
copy 1 flipped), so flip augmentation is not frozen at extraction time.
``latent_shape`` is ``(C, H, W)`` (or ``(C, T, H, W)`` for video). bfloat16 is stored
as the raw uint16 bits.

Shard ``k`` holds source items ``[k * shard_size, min((k + 1) * shard_size, N))``
minus those that could not be read (listed in its ``skipped``), so the shard split
does not depend on how many processes wrote it: a run can be resumed with another
world size. Crash safety: a shard's files are written to temporary names, fsynced and
renamed into place, and only then listed in the writer's index part (itself replaced
atomically). A resumed writer trusts only listed shards; anything else is rewritten.
"""
import glob
import itertools
import json
import os
import os.path as osp
import re

import numpy as np
import torch

from mmsora.utils.atomic_io import atomic_file, atomic_write_bytes, tmp_target
from mmsora.utils.cli import first_line
from mmsora.utils.labels import check_label_range

__all__ = ['LatentStoreWriter', 'LatentStore', 'FORMAT', 'VERSION', 'SourceChangedError',
           'SourceCountError', 'read_store_progress', 'nonfinite_items', 'foreign_folder',
           'foreign_folder_message', 'folder_entries']

FORMAT = 'mmsora.latent_store'
VERSION = 1
DTYPES = ('float16', 'bfloat16', 'float32')
CONTENTS = ('moments', 'samples')
# Fields that must agree between a resumed writer, the parts on disk and the index.
HEADER_KEYS = ('format', 'version', 'dtype', 'latent_shape', 'content', 'num_copies',
               'scale_factor', 'shift_factor', 'vae', 'shard_size', 'num_source_items',
               'num_shards', 'text_shape', 'pooled_dim')
# Not in HEADER_KEYS: stores written before it was recorded have none, and resume (and
# keep none: LatentStoreWriter._kept_record).
FINGERPRINT_KEY = 'source_fingerprint'
# Extraction settings (``meta``) recorded only since a later version: a store whose
# meta lacks one resumes unchecked on it (it may have been written with any value).
# (classes: image stores always recorded theirs, video stores only since a later one.)
LATER_META_KEYS = ('hidden_layer', 'clips_per_video', 'video_reader', 'classes')


class SourceChangedError(ValueError):
    """The source items (paths, captions, labels, their order) are not the ones a store
    was started from, though their number is."""


class SourceCountError(ValueError):
    """A store was begun from another number of source items (``num_source_items``)
    than a run has: ``recorded`` and ``given``, and the ``fingerprint`` of the items it
    was begun from (None where it records none), so that a tool can say what changed
    (tools/extract_features.py: rows added to a manifest)."""

    def __init__(self, message, recorded, given, fingerprint=None):
        super().__init__(message)
        self.recorded, self.given, self.fingerprint = recorded, given, fingerprint


# --------------------------------------------------------------------------- #
#                                 File helpers                                 #
# --------------------------------------------------------------------------- #
def _atomic_save_npy(path, array):
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)


def _atomic_save_json(path, obj):
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'cannot read latent store index {path!r}: {e}') from None


def shard_name(shard_id):
    return f'shard_{shard_id:05d}.npy'


def labels_name(shard_id):
    return f'labels_{shard_id:05d}.npy'


# Optional per-shard text files: field -> file name prefix.
TEXT_FILES = dict(text_embeds='text', text_mask='text_mask', pooled_text_embeds='pooled')


def text_name(field, shard_id):
    return f'{TEXT_FILES[field]}_{shard_id:05d}.npy'


# --------------------------------------------------------------------------- #
#                                dtype encoding                                #
# --------------------------------------------------------------------------- #
TORCH_DTYPES = dict(float16=torch.float16, bfloat16=torch.bfloat16, float32=torch.float32)


def encode_dtype(x, dtype):
    """float array/tensor → the stored numpy array (bfloat16 as uint16 bits).

    A CPU tensor (or array) already in ``dtype`` is returned as a view, not copied: a
    writer that buffers a shard in the stored dtype (tools/extract_features.py) had
    it copied through float32 at 3x its size."""
    if isinstance(x, torch.Tensor) and x.dtype == TORCH_DTYPES[dtype]:
        x = x.detach().cpu().contiguous()
        return x.view(torch.int16).numpy().view(np.uint16) if dtype == 'bfloat16' \
            else x.numpy()
    if dtype == 'bfloat16':
        t = torch.as_tensor(x).float().to(torch.bfloat16)  # round to nearest even
        return t.view(torch.int16).numpy().view(np.uint16)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    with np.errstate(over='ignore'):  # (inf past float16's range: write_shard refuses it)
        return np.asarray(x).astype(dtype, copy=False)


def decode_dtype(a, dtype):
    """Stored numpy array → float32 array (a new array, never a view of the file)."""
    if dtype == 'bfloat16':
        return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.array(a, dtype=np.float32)


def nonfinite_counts(stored, dtype):
    """``{row: how many values}`` of the rows of a stored array ``(n, ...)`` (as
    :func:`encode_dtype` gives it) that hold NaN or inf in the stored dtype: a float32
    value past float16's range is inf once stored (tools/extract_features.py's rule)."""
    counts = np.zeros(len(stored), np.int64)
    for start in range(0, len(stored), 256):  # (a mask of 256 rows, not of a 1 GB shard)
        block = stored[start:start + 256]
        # bfloat16 as uint16 bits: all exponent bits set is inf or NaN
        bad = (block & 0x7F80) == 0x7F80 if dtype == 'bfloat16' else ~np.isfinite(block)
        counts[start:start + len(block)] = bad.reshape(len(block), -1).sum(1)
    return {int(row): int(counts[row]) for row in np.flatnonzero(counts)}


def _is_mask(value) -> bool:
    """Whether a field holds booleans (a text mask: no NaN or inf to hold)."""
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    return np.asarray(value).dtype == bool


def nonfinite_stored(fields, dtype):
    """``{row: (field, count, size)}`` of the items (rows) of stored arrays ``{field:
    (n, ...)}`` (as :func:`encode_dtype` gives them) that hold NaN or inf: the first
    such field of each, how many of its values, of how many. Boolean fields are passed
    over. The rule a writer refuses a shard by (:meth:`LatentStoreWriter.write_shard`)."""
    found = {}
    for field, stored in fields.items():
        if _is_mask(stored):
            continue
        for row, count in nonfinite_counts(stored, dtype).items():
            found.setdefault(row, (field, count, stored[row].size))
    return found


def nonfinite_items(fields, dtype):
    """:func:`nonfinite_stored` of float values ``{field: (n, ...) array or tensor}``
    not yet stored: each converted to ``dtype`` as the writer stores it first, so a
    float32 value past float16's range counts as inf. What a tool skips or refuses an
    item by before writing (tools/extract_features.py, convert_fastdit_features.py):
    before, extraction checked values in the dtype they were computed in, and the
    writer then refused a whole shard, stopping the run."""
    return nonfinite_stored({field: value if _is_mask(value) else encode_dtype(value, dtype)
                             for field, value in fields.items()}, dtype)


def stored_tensor(a, dtype):
    """Stored numpy array → torch tensor in the stored dtype (a new tensor, never a
    view of the file): float16 / bfloat16 stay half the bytes of float32."""
    a = np.array(a, dtype=np.asarray(a).dtype.newbyteorder('='))  # (torch: native order)
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) \
        if dtype == 'bfloat16' else torch.from_numpy(a)


# --------------------------------------------------------------------------- #
#                       What a folder given as a store holds                   #
# --------------------------------------------------------------------------- #
# The names of a shard's files (shard_name, labels_name, text_name).
STORE_FILE = re.compile(r'(shard|labels|text|text_mask|pooled)_\d{5,}\.npy')


def _entry_kind(name) -> str:
    """What a folder entry ``name`` is to a latent store: 'store' (one it writes:
    index.json, parts/, a shard's file), 'temporary' (the temporary name of one: a write
    cut off), 'hidden' (another name starting with '.': .DS_Store, .gitkeep, the
    extraction lock, passed over) or 'other'."""
    target = tmp_target(name)
    base = target[0] if target else name.partition('.tmp.')[0]  # (older temporaries)
    if base in ('index.json', 'parts') or STORE_FILE.fullmatch(base):
        return 'store' if base == name else 'temporary'
    return 'hidden' if name.startswith('.') else 'other'


def folder_entries(root) -> dict | None:
    """``{name: kind}`` (:func:`_entry_kind`) of the entries of a folder ``root``,
    sorted by name; None for a missing folder. The one rule of which entries count that
    the readers of a folder given as a store go by (:func:`foreign_folder`,
    :func:`_what_is_there`): subfolders count as entries, hidden names do not."""
    if not osp.isdir(root):
        return None
    return {name: _entry_kind(name) for name in sorted(os.listdir(root))}


def _files_in(root, entries, most=1000) -> list:
    """The names of the first ``most`` files among ``entries`` (names in ``root``) and
    in their subfolders, hidden ones passed over there too. (Before, the whole tree was
    listed first: a parent folder of ImageNet's 1.3 M pictures, given as a store.)"""
    def walk():
        for name in entries:
            path = osp.join(root, name)
            if not osp.isdir(path):
                yield name
                continue
            for _, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
                yield from sorted(f for f in files if not f.startswith('.'))
    return list(itertools.islice(walk(), most))


def _what_is_there(root) -> str:
    """A hint for a folder given as a latent store that is not one (yet)."""
    entries = folder_entries(root)
    if entries is None:
        return ' (no such folder)'
    if entries.get('parts') == 'store' and osp.isdir(osp.join(root, 'parts')):
        return (' (extraction not finalized? rerun the extraction to finish it; a store '
                'written from Python needs LatentStoreWriter.finalize() once every shard '
                'is written)')
    shards = [name for name, kind in entries.items()
              if kind == 'store' and STORE_FILE.fullmatch(name)]
    if shards:
        # (its own files, not fast-DiT's: a store copied without index.json and parts/;
        # a writer trusts only the shards an index lists, so a rerun encodes them again)
        return (f': it holds a latent store\'s shards ({", ".join(shards[:2])}'
                f'{", ..." if len(shards) > 2 else ""}) without its index: copy the whole '
                'store folder (index.json and parts/ too), or rerun the extraction into it '
                '(it encodes every shard again: a writer trusts only shards an index lists)')
    counted = [name for name, kind in entries.items() if kind in ('store', 'other')]
    if not counted:
        # (a Ctrl-C before the first shard was written: the writer makes the folder
        # first, parts/ at the first shard; a temporary file is a shard cut off)
        return (' (the folder is empty: extraction stopped before its first shard? rerun '
                'the extraction to write the store)')
    names = _files_in(root, counted)
    if any(name.endswith('.npy') for name in names):
        return (": it holds .npy files: fast-DiT's per-file features? read them with "
                "dataset=dict(type='NpyLatentDataset', features_dir=..., labels_dir=...) "
                'or convert them: tools/convert_fastdit_features.py')
    if any(name.lower().endswith(('.jpg', '.jpeg', '.png', '.mp4', '.avi', '.mov', '.webm'))
           for name in names):
        return (': it holds pictures or videos: encode them into a store first with '
                'tools/extract_features.py')
    return ''


def foreign_folder(root) -> list:
    """The sorted entries of a folder ``root`` that holds files but nothing a latent
    store writes (:func:`folder_entries`: 'store' or 'temporary'), hidden ones
    (.DS_Store, .gitkeep, the extraction lock) passed over: a store written there would
    lie among them. [] for a folder that is missing or empty, or that holds a store's
    files (begun or finished, its index missing too)."""
    entries = folder_entries(root) or {}
    if any(kind in ('store', 'temporary') for kind in entries.values()):
        return []
    return [name for name, kind in entries.items() if kind == 'other']


def foreign_folder_message(out) -> str | None:
    """``--out OUT holds other files (a, b, c, ...) and no latent store: ...`` where
    ``out`` is a :func:`foreign_folder` (the store-writing tools' ``--out``), else None."""
    foreign = foreign_folder(out)
    if not foreign:
        return None
    return (f'--out {out} holds other files ({", ".join(foreign[:3])}'
            f'{", ..." if len(foreign) > 3 else ""}) and no latent store: pick an empty or '
            'new folder for the store')


# --------------------------------------------------------------------------- #
#                      Cheap check of a shard's files                          #
# --------------------------------------------------------------------------- #
def npy_header(path):
    """``(shape, dtype, offset of the data)`` of an .npy file, from its header alone."""
    with open(path, 'rb') as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # (3.0: utf-8 field names, which no store array has)
            raise ValueError(f'.npy format {version} is not one of a store')
        return tuple(shape), dtype, f.tell()


def shard_files(shard):
    """``{field: file name}`` of a shard's record: labels, latents and its text fields
    (labels first: those are what a reader loads up front)."""
    return dict(labels=shard['labels_file'], latents=shard['file'],
                **(shard.get('text_files') or {}))


def shard_shapes(header, count):
    """``{field: shape}`` of the arrays of a shard of ``count`` items of a store."""
    k = 2 if header['content'] == 'moments' else 1
    shapes = dict(labels=(count,),
                  latents=(count, header['num_copies'], k, *header['latent_shape']))
    if header.get('text_shape'):
        shapes.update(text_embeds=(count, *header['text_shape']),
                      text_mask=(count, header['text_shape'][0]))
        if header.get('pooled_dim'):
            shapes['pooled_text_embeds'] = (count, header['pooled_dim'])
    return shapes


def check_file(path, shape=None):
    """``(what, detail)`` of what is wrong with a store file by its size and .npy
    header alone (no data is read), e.g. ``('truncated', '200000 of 1234567 bytes')``;
    None when nothing is. A file cut short (a copy or a sync that stopped, a full
    disk) is seen so; bytes overwritten inside the data are not."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return 'missing', 'no such file'
    except OSError as e:
        return 'unreadable', first_line(e)
    try:
        got, dtype, offset = npy_header(path)
    except (ValueError, SyntaxError, TypeError, OSError, EOFError) as e:
        return 'damaged', f'{size} bytes, no .npy header: {first_line(e)}'
    if dtype.hasobject:
        return 'damaged', 'an .npy of pickled objects'
    need = offset + int(np.prod(got, dtype=np.int64)) * dtype.itemsize
    if size < need:
        return 'truncated', f'{size} of {need} bytes'
    if size > need:
        return 'damaged', f'{size} bytes, its header says {need}'
    if shape is not None and got != tuple(shape):
        return 'damaged', f'shape {got}, the index says {tuple(shape)}'
    return None


def damaged_shard(root, shard, header):
    """``(file name, what, detail)`` of the first file of a shard's record (its index
    entry) that :func:`check_file` finds wrong, else None: a stat and a header read a
    file."""
    shapes = shard_shapes(header, shard['count'])
    for field, name in shard_files(shard).items():
        found = check_file(osp.join(root, name), shapes.get(field))
        if found:
            return (name, *found)
    return None


def record_key(shard):
    """What the check of a shard's record depends on (its files and item count): the
    key a record found sound is kept under (``checked``)."""
    return shard['count'], tuple(shard_files(shard).items())


def sound_records(root, records, header, checked=None):
    """``({id: record}, {id: damaged_shard(...)})`` of ``{id: [its records, in the
    order of the store's files]}``: of each shard the last record whose files pass the
    cheap check (an index part written after a repair may differ from an older one),
    else why the last one fails.

    ``checked`` (a set of :func:`record_key`) holds the records found sound before:
    they are not checked again, and those found sound now are added. A record found
    damaged is not kept so: its shard is written again under the same record (by this
    process or another rank), so it is checked each time."""
    checked = set() if checked is None else checked
    done, damaged = {}, {}
    for k, recs in records.items():
        tried = []
        for rec in reversed(recs):
            if rec in tried:
                continue
            tried.append(rec)
            found = (None if record_key(rec) in checked
                     else damaged_shard(root, rec, header))
            if found is None:
                checked.add(record_key(rec))
                done[k] = rec
                break
            damaged.setdefault(k, found)
        if k in done:
            damaged.pop(k, None)
    return done, damaged


def repair_advice(root, index):
    """What mends the store at ``root`` (its ``index``) with a damaged shard file, found
    so when the store opens or when the file is read: the tool that wrote it checks
    every shard's files on a rerun and writes the damaged ones again. Before: 'extract
    the store again into a new folder', hours of encoding for one file."""
    tool = ('tools/convert_fastdit_features.py' if str(index.get('vae', ''))
            .startswith('fast-DiT features') else 'tools/extract_features.py')
    return (f'rerun the {tool} command that wrote {root!r} (the same command): it checks '
            'every shard and writes the damaged ones again (or restore the files)')


def say_damaged(prog, damaged, most=20, doing='encoding'):
    """Print what a rerun of the tool ``prog`` does with the finished shards whose
    files are cut short or missing (``{id: (file name, what, detail)}``, as
    :func:`read_store_progress` and :attr:`LatentStoreWriter.damaged` give them): a
    line each, the first ``most`` of them, then how many more; ``doing``: what the
    tool does to a shard again ('encoding'; 'writing' for a conversion, which encodes
    nothing). Before, a rerun kept them (a complete store: 'nothing to do'), and
    training met them when it first read them, hours in on a large store."""
    for k in sorted(damaged)[:most]:
        name, what, detail = damaged[k]
        print(f'{prog}: {name}: {what} ({detail}): {doing} it again', flush=True)
    if len(damaged) > most:
        print(f'{prog}: ... and {len(damaged) - most} more damaged shards: {doing} them '
              'again', flush=True)


def _load_shard_file(path, mmap_mode, repair):
    """``np.load`` of a store file, its failures named with the file and what mends it
    (``repair``: :func:`repair_advice`). numpy says 'mmap length is greater than file
    size', or 'This file contains pickled (object) data' for bytes that are not an
    .npy."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f'latent store file missing: {path!r}; {repair}') \
            from None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f'cannot read latent store file {path!r}: it is truncated or '
                         f'damaged ({first_line(e)}); {repair}') from None


def _other_settings(root, path, key, theirs, ours):
    return (f'{root!r} holds a latent store written with {key}={theirs!r} (in '
            f'{osp.relpath(path, root)}); this run has {key}={ours!r}: use another '
            'output folder or the same settings')


def _known_part(theirs, ours):
    """``ours`` with its unknown (None) entries taken from ``theirs``: a setting known
    in part before the models load (a text length, not the encoder's width)."""
    if (isinstance(ours, (list, tuple)) and None in ours and isinstance(theirs, list)
            and len(theirs) == len(ours)):
        return [t if o is None else o for t, o in zip(theirs, ours)]
    return ours


# Settings that name a folder: the same folder typed another way ('vae/', './vae', an
# absolute path) is the same setting (a rerun with one was refused).
PATH_SETTINGS = ('vae', 'text_encoder')


def _same(key, theirs, ours) -> bool:
    if theirs == ours:
        return True
    if key in PATH_SETTINGS and isinstance(theirs, str) and isinstance(ours, str) \
            and theirs and ours:
        return osp.realpath(theirs) == osp.realpath(ours)
    return False


def later_keys_lacking(meta, recorded):
    """Keys of ``meta`` in :data:`LATER_META_KEYS` that ``recorded`` (an index or part
    with a ``meta``) lacks: written before they were recorded, its shards may hold any
    value of them, so they are not checked against it. (A file with no ``meta`` at all
    lacks none here: the index that vouches for it records them.)"""
    if not meta or 'meta' not in recorded:
        return set()
    return {k for k in LATER_META_KEYS if k in meta and k not in recorded['meta']}


def _vouching_index(root):
    """``root``'s index.json when it can vouch for a part that records no extraction
    settings (an older mmsora's): it records them (``meta``) and says the store is
    complete (one an older mmsora finished); else None."""
    path = osp.join(root, 'index.json')
    if not osp.exists(path):
        return None
    data = _read_json(path)
    return data if 'meta' in data and data.get('complete') else None


def _covered_by_index(root, recorded, path, index=None):
    """Whether ``recorded`` (a part at ``path``) lists only shards that ``index``
    (:func:`_vouching_index` of ``root`` when None) lists alike.

    Only a complete index vouches: an older mmsora's incomplete one may list shards
    resumed unchecked with other settings. So before a writer says a vouching index is
    incomplete, it records the index's ``meta`` in the parts it vouches for
    (:meth:`LatentStoreWriter.finalize`)."""
    if osp.abspath(path) == osp.abspath(osp.join(root, 'index.json')):
        return False
    index = _vouching_index(root) if index is None else index
    if index is None:
        return False
    listed = {int(s['id']): s for s in index['shards']}
    return all(listed.get(int(s['id'])) == s for s in recorded['shards'])


def check_recorded(root, recorded, path, settings, meta=None):
    """Refuse (ValueError naming the first setting that differs) a store file
    ``recorded`` (index or part at ``path``) written with other ``settings`` (header
    keys; those left out, or None inside a list, are not compared) or ``meta``;
    :class:`SourceChangedError` where both record a ``source_fingerprint`` and they
    differ. Given a ``meta``, a file that records none (an older mmsora's part) is
    refused unless index.json records one and lists its shards alike, and the settings
    a shard's own record holds (``meta``: :meth:`LatentStoreWriter._kept_record`) are
    compared too."""
    # The extraction settings (frame stride, fps, text encoder, ...): a rerun with
    # others kept the old latents. Before the header's: an option named there says what
    # differs (a header count follows from it).
    if meta and 'meta' not in recorded and not _covered_by_index(root, recorded, path):
        # Parts of older versions hold none: a store they left half-done was resumed
        # unchecked (another frame stride, reordered rows: a clip stored twice).
        raise ValueError(
            f'{root!r} holds a latent store begun by an older mmsora '
            f'({osp.relpath(path, root)} records no extraction settings), whose settings '
            "cannot be checked against this run's: use a new --out (or delete the folder "
            'to extract it again)')
    run_meta = None if meta is None else json.loads(json.dumps(meta))
    if 'meta' in recorded and run_meta is not None:
        theirs, unchecked = recorded['meta'], later_keys_lacking(run_meta, recorded)
        for key in sorted(set(run_meta) | set(theirs)):
            if key in unchecked:
                continue
            if not _same(key, theirs.get(key), run_meta.get(key)):
                raise ValueError(_other_settings(root, path, key, theirs.get(key),
                                                 run_meta.get(key)))
    if run_meta is not None:  # the settings a shard written into an older store records
        for shard in recorded.get('shards') or ():
            for key, theirs in (shard.get('meta') or {}).items():
                if not _same(key, theirs, run_meta.get(key)):
                    raise ValueError(_other_settings(root, path, key, theirs,
                                                     run_meta.get(key)))
    for key in HEADER_KEYS:
        if key not in settings:
            continue
        theirs = recorded.get(key)
        ours = _known_part(theirs, settings[key])
        if key == 'num_source_items' and theirs != ours:
            raise SourceCountError(_other_settings(root, path, key, theirs, ours), theirs,
                                   ours, recorded.get(FINGERPRINT_KEY))
        if not _same(key, theirs, ours):
            raise ValueError(_other_settings(root, path, key, theirs, ours))
    theirs, ours = recorded.get(FINGERPRINT_KEY), settings.get(FINGERPRINT_KEY)
    if theirs and ours and theirs != ours:
        raise SourceChangedError(
            f'{root!r} holds a latent store of other source items (source_fingerprint '
            f'{theirs[:12]}... in {osp.relpath(path, root)}; this run has {ours[:12]}...): '
            'they changed since it was started; use another output folder')


def _store_files(root):
    index = osp.join(root, 'index.json')
    return ([index] if osp.exists(index) else []) + sorted(
        glob.glob(osp.join(root, 'parts', 'rank-*.json')))


def read_store_progress(root, settings, meta=None):
    """What a writer would find at ``root``, read before what its header needs (a VAE's
    latent shape) is known: None where no store was begun, else a dict of ``header``
    (the recorded one), ``done`` (sorted ids of the finished shards), ``shards`` (their
    records, in that order), ``num_shards``, ``num_items`` and ``num_skipped`` (in the
    finished shards), ``complete`` (index.json says every shard is there:
    :meth:`LatentStoreWriter.finalize` has nothing to add), ``unchecked`` (sorted
    keys of ``meta`` in :data:`LATER_META_KEYS` that a file written before they were
    recorded lacks: its shards may hold any value), ``damaged`` (``{id: (file name,
    what, detail)}`` of the recorded shards whose files :func:`check_file` finds wrong:
    they are not in ``done``, so a writer writes them again) and ``checked`` (the
    :func:`record_key` of each record whose files passed: a writer given them,
    ``LatentStoreWriter(checked=...)``, does not check those files again).

    Every index and part is checked as :func:`check_recorded` does (the same refusals a
    writer gives), so each torchrun rank, reading them before any rank writes, decides
    the same."""
    paths = _store_files(root)
    if not paths:
        return None
    records, header, indexed, unchecked, checked = {}, None, False, set(), set()
    for path in paths:
        data = _read_json(path)
        check_recorded(root, data, path, settings, meta)
        unchecked.update(later_keys_lacking(meta, data))
        header = header or {k: data.get(k) for k in (*HEADER_KEYS, FINGERPRINT_KEY)}
        if osp.basename(path) == 'index.json':
            indexed = bool(data.get('complete'))
        for shard in data['shards']:
            records.setdefault(int(shard['id']), []).append(shard)
    done, damaged = sound_records(root, records, header, checked)
    return dict(header=header, done=sorted(done), shards=[done[k] for k in sorted(done)],
                num_shards=header['num_shards'],
                num_items=sum(s['count'] for s in done.values()),
                num_skipped=sum(len(s['skipped']) for s in done.values()),
                complete=indexed and len(done) == header['num_shards'],
                unchecked=sorted(unchecked), damaged=dict(sorted(damaged.items())),
                checked=checked)


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
        nothing checked, and a later run with their true items was refused."""
        meta = json.loads(json.dumps(self.meta))
        lacking, fingerprint = set(), self.fingerprint
        for path in _store_files(self.root):
            recorded = _read_json(path)
            lacking.update(later_keys_lacking(meta, recorded))
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

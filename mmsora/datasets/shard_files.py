"""A latent store's shard files: their names and shapes by a shard's record, the cheap
check of each (a stat and an .npy header read: no data), what mends a damaged one, and
their loading with its failures named."""
import os
import os.path as osp

import numpy as np

from mmsora.utils.cli import first_line

__all__ = ['npy_header', 'shard_files', 'shard_shapes', 'check_file', 'damaged_shard',
           'record_key', 'sound_records', 'repair_advice', 'say_damaged']


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

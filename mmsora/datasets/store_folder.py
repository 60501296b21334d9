"""What a folder given as a latent store holds: the one rule of which entries count
(:func:`folder_entries`), a hint for a folder that holds no store (yet), and the
store-writing tools' refusal of an ``--out`` that holds other files."""
import itertools
import os
import os.path as osp
import re

from mmsora.utils.atomic_io import tmp_target

__all__ = ['STORE_FILE', 'folder_entries', 'foreign_folder', 'foreign_folder_message']


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

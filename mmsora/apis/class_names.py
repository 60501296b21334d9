"""Class names at sampling: the names the latent store a run trains on records for its
labels (``meta.classes`` of its ``index.json``: tools/extract_features.py writes them
from class folders, or a manifest's ``class_name`` column), so that tools/infer.py
takes ``--labels Biking`` and names its clips ``sample_000_label0_Biking.mp4``: a
UCF-101 user mapped ids to folder names by hand."""
import difflib
import numbers
import os
import os.path as osp
import re
from typing import List, Optional, Sequence, Tuple

from mmsora.datasets.store_checks import store_roots
from mmsora.datasets.store_format import _read_json
from mmsora.utils.cli import UserError

__all__ = ['run_classes', 'class_ids', 'said_labels', 'file_safe', 'name_clip_files']


def run_classes(cfg) -> Tuple[Optional[list], str]:
    """``(classes, why)``: the class names of the latent stores ``cfg``'s
    train_dataloader reads (``classes[label]``; None for a label no store names), merged
    label by label as PackedLatentDataset compares them; ``(None, why)`` where no store
    names any, ``why`` saying what is missing."""
    roots = store_roots(cfg)
    if not roots:
        return None, 'this run trains on no latent store (train_dataloader.dataset)'
    named, found = {}, []  # label: its name (the first store's that names it)
    for root in roots:
        index = osp.join(root, 'index.json')
        if not osp.isfile(index):
            continue
        try:
            meta = _read_json(index).get('meta') or {}
        except ValueError:  # (the dataset names a damaged index where it reads it)
            continue
        found.append(root)
        for label, name in enumerate(meta.get('classes') or ()):
            if name is not None:
                named.setdefault(label, name)
    stores = ', '.join(found or roots)
    if not found:
        return None, f'its latent store {stores} is not there'
    if not named:
        return None, f'its latent store {stores} records no class names'
    return [named.get(label) for label in range(max(named) + 1)], ''


def class_ids(labels: Optional[list], classes: Optional[list], why: str) -> Optional[list]:
    """tools/infer.py's ``--labels`` (class ids, 'random' or class names) with each
    name made its id in ``classes`` (:func:`run_classes`); ids and 'random' as given.

    Raises:
        mmsora.utils.cli.UserError: one line for a name ``classes`` lacks (with the
            close ones), or any name where the classes are not known (``why``).
    """
    names = [y for y in labels or [] if isinstance(y, str) and y != 'random']
    if not names:
        return labels
    if classes is None:
        raise UserError(f'--labels {names[0]!r}: class names need the class names of the '
                        f'latent store the run trains on, and {why}: give class ids (or '
                        "'random')")
    ids = {}
    for label, name in enumerate(classes):
        if name is not None:
            ids.setdefault(name, label)
    for name in names:
        if name not in ids:
            raise UserError(f"--labels {name!r}: the run's latent store records no class of "
                            f'that name ({len(classes)} classes{_close_names(name, ids)}): '
                            "give one of its class names, a class id or 'random'")
    return [ids[y] if y in names else y for y in labels]


def _close_names(name: str, names) -> str:
    """'; close: ...' with up to three names ``name`` is likely meant for (the same
    word in other case first), or ''."""
    lower = {}
    for one in names:
        lower.setdefault(one.lower(), one)
    close = difflib.get_close_matches(name.lower(), list(lower), n=3)
    if name.lower() in lower and name.lower() not in close:
        close.insert(0, name.lower())
    return f'; close: {", ".join(repr(lower[c]) for c in close)}' if close else ''


def _class_name(label, classes: Optional[Sequence]) -> Optional[str]:
    """The name of class ``label``, or None (classes unknown, or unnamed)."""
    if classes is None or not isinstance(label, numbers.Integral) or \
            not 0 <= label < len(classes):
        return None
    return classes[label]


def said_labels(labels: list, classes: Optional[Sequence]) -> str:
    """'labels [0, 1]', with the classes' names where known ('labels [0, 1] (Biking,
    Diving)'): an image grid has no file names that say them."""
    names = [_class_name(y, classes) for y in labels]
    if not any(names):
        return f'labels {labels}'
    return f'labels {labels} ({", ".join(str(n) for n in names)})'


def file_safe(name: str) -> str:
    """A class name as part of a file name: each run of characters other than letters,
    digits, '.', '-' and '_' one '_' (a '/' made a folder; 'golden retriever' ->
    'golden_retriever'), cut to 64 characters (a file name has 255 bytes)."""
    return re.sub(r'[^\w.-]+', '_', name).strip('_')[:64]


def name_clip_files(paths: List[str], labels: list,
                    classes: Optional[Sequence]) -> List[str]:
    """Rename the files :func:`~mmsora.apis.save_videos` wrote (``paths``: mp4s, then
    GIFs, each in the order of ``labels``) to carry each sample's class name after its
    label (``sample_000_label0_Biking.mp4``); a label without a name keeps its file's
    name. Returns the files' paths."""
    named = []
    for k, path in enumerate(paths):
        name = _class_name(labels[k % len(labels)], classes)
        suffix = file_safe(name) if name is not None else ''
        if suffix:
            stem, ext = osp.splitext(path)
            new = f'{stem}_{suffix}{ext}'
            os.replace(path, new)
            path = new
        named.append(path)
    return named

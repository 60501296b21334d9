"""Which checkpoint a work dir or path gives: mmengine's ``last_checkpoint`` record or
the newest ``iter_N.pth`` / ``epoch_N.pth``, a cut-short, empty or missing one named
with the newest intact earlier one (for --resume, infer, test and export), and a work
dir or diffusers folder given where a checkpoint file is meant."""
import os
import os.path as osp
import re
import zipfile
from typing import Optional, Tuple

from mmsora.utils.checkpoint import (check_pickle_start, check_safetensors_file,
                                     not_a_checkpoint_folder)

__all__ = ['resolve_checkpoint', 'last_checkpoint', 'saved_checkpoint', 'checkpoint_number',
           'newest_numbered_checkpoint', 'check_checkpoint_complete', 'intact_earlier_checkpoint',
           'earlier_checkpoint_hint', 'staging_name', 'aside_name', 'replaced_midway',
           'stopped_replace_hint']


def resolve_checkpoint(path: str) -> str:
    """What the tools read for a checkpoint ``path``: a file, a DeepSpeed checkpoint
    folder or a diffusers DiT folder as they are, a work dir's newest checkpoint (the
    one ``last_checkpoint`` names, else its highest ``iter_N.pth``). Raises
    FileNotFoundError naming what a folder of another kind is
    (:func:`not_a_checkpoint_folder`), or that ``path`` does not exist."""
    from mmsora.utils.diffusers_dit import diffusers_dit_folder
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint
    if not osp.exists(path):
        raise FileNotFoundError(f'checkpoint not found: {path}{stopped_replace_hint(path)}')
    if not osp.isdir(path) or is_zero_checkpoint(path) or diffusers_dit_folder(path):
        return path
    try:
        newest = saved_checkpoint(path, option=None)
    except FileNotFoundError as e:  # (where it says how to put one back: as it is)
        raise FileNotFoundError(str(e) if getattr(e, 'put_back', False)
                                else f'{e}: give the checkpoint file') from None
    if newest is None:
        raise FileNotFoundError(not_a_checkpoint_folder(path))
    return newest


def _named_last(work_dir) -> str:
    """What a work dir's ``last_checkpoint`` file holds ('' where none, or empty)."""
    last = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(last):
        return ''
    with open(last) as f:
        return f.read().strip()


def last_checkpoint(work_dir):
    """The checkpoint a work dir's ``last_checkpoint`` file names, else its newest
    numbered one (:func:`newest_numbered_checkpoint`), or None. It is the work dir's
    own file of that name, whether it exists or not (:func:`saved_checkpoint` refuses
    one gone): mmengine writes an absolute path, which in a copied (or moved) work dir
    names the original's checkpoint. Before, the original's was taken where the
    copy's was gone: ``--resume`` went on from another folder's checkpoint, and
    ``max_keep_ckpts`` then pruned the copy's own intact ones.

    What ``--resume``, tools/infer.py WORK_DIR and tools/export_denoiser.py WORK_DIR
    all take. Before, a work dir holding ``iter_*.pth`` without its
    ``last_checkpoint`` (the checkpoints copied alone) was taken for one without a
    checkpoint: ``--resume`` started at iteration 0 and pruned the old ones as it
    saved, and the other tools found nothing to read.
    """
    named = _named_last(work_dir)
    if not named:  # none, or empty (written in place and cut short by a kill)
        return newest_numbered_checkpoint(work_dir)
    own = osp.join(work_dir, osp.basename(named.rstrip('/')))
    if osp.exists(own) or osp.realpath(named) != osp.realpath(own):
        return own
    return named  # (its own, gone: named as the file names it)


def saved_checkpoint(work_dir, option: Optional[str] = '--resume'):
    """:func:`last_checkpoint`, checked to exist: None when nothing was saved; raises
    FileNotFoundError when ``last_checkpoint`` names a checkpoint gone (a work dir
    moved without it, its file removed, or a copy's own file removed: the original's
    is never taken), saying which earlier checkpoint of the work dir is readable
    (:func:`earlier_checkpoint_hint`, ``option`` the way to give it). What
    ``--resume`` continues from and what the tools read of a work dir
    (:func:`resolve_checkpoint`)."""
    newest = last_checkpoint(work_dir)
    if newest is not None and not osp.exists(newest):
        last, named = osp.join(work_dir, 'last_checkpoint'), _named_last(work_dir)
        if named != newest and osp.exists(named):  # a copy: the original's is there
            said = (f'{last} names {named}, another folder\'s checkpoint, and the work dir\'s '
                    f'own {newest} does not exist (a copied work dir resumes from its own '
                    'checkpoints only)')
        else:
            said = f'{last} names {named}, which does not exist'
        put_back = stopped_replace_hint(newest)
        earlier = intact_earlier_checkpoint(newest)
        error = FileNotFoundError(said + put_back + _earlier_hint(earlier, option))
        error.earlier = earlier  # (what a caller may offer in place of its own advice)
        error.put_back = replaced_midway(newest)  # (it says how to put it back)
        raise error
    return newest


# The hidden names beside a checkpoint ``iter_4.pth`` that a DeepSpeed save writes
# (mmsora/engine/strategies/deepspeed_save.py): hidden, so that globs (``iter_*.pth``)
# and the finders here pass them over.

def staging_name(path: str) -> str:
    """The folder a DeepSpeed save writes checkpoint ``path`` into
    (``W/.iter_4.saving.pth``), put in its place once whole."""
    return _beside(path, 'saving')


def aside_name(path: str) -> str:
    """Where the old checkpoint ``path`` is moved for the moment between two renames,
    where the old and the new folder cannot be exchanged in one step
    (``W/.iter_4.old.pth``)."""
    return _beside(path, 'old')


def _beside(path: str, word: str) -> str:
    folder, name = osp.split(os.fspath(path))
    stem, ext = osp.splitext(name)
    return osp.join(folder, f'.{stem}.{word}{ext}')


def replaced_midway(path: str) -> bool:
    """Whether a save of ``path`` was stopped between the two renames that replace it
    (``deepspeed_save.put_in_place`` where the file system cannot exchange two
    folders), or its put-back failed: ``path`` missing, the old checkpoint, whole, at
    :func:`aside_name` (the new one at :func:`staging_name`, or removed). (Checked in
    that order: a save that finishes the replace meanwhile is not taken for one
    stopped.)"""
    path = str(path).rstrip('/' + os.sep)
    return osp.lexists(aside_name(path)) and not osp.lexists(path)


def stopped_replace_hint(path: str) -> str:
    """``'; a save was stopped while it replaced it: ...'`` to end an error about the
    missing checkpoint ``path`` with, where a DeepSpeed save stopped while it replaced
    ``path`` left its old checkpoint or its staging folder beside it ('' otherwise;
    before, such errors said 'not found' alone, of a checkpoint whole under a hidden
    name).

    The old one is the checkpoint to put back: whole (it was in place), and of the same
    iteration as the new one. The new one is not offered: a checkout of Dec 7 2026
    before this could leave a part of one beside the old (a save of the same
    checkpoint killed while it wrote), and the next save of it puts the old one back
    itself (``deepspeed_save.remove_leftovers``). A staging folder alone may be a save
    stopped while it wrote."""
    path = str(path).rstrip('/' + os.sep)
    if not path or osp.lexists(path):
        return ''
    new, old = staging_name(path), aside_name(path)
    if replaced_midway(path):
        return (f'; a save was stopped while it replaced it: the one it replaced, whole, '
                f'is {old}: rename it back (mv {old} {path})')
    if osp.lexists(new):
        return (f'; {new} is a save of it that was stopped before it took its place, '
                'perhaps while it wrote: not a checkpoint to take')
    return ''


_NUMBERED = re.compile(r'(iter|epoch)_(\d+)\.pth')


def checkpoint_number(path: str) -> Optional[Tuple[str, int]]:
    """``('iter', N)`` or ``('epoch', N)`` of a checkpoint named as mmengine's
    CheckpointHook names them (``iter_N.pth``, ``epoch_N.pth``; a file or a DeepSpeed
    folder), else None."""
    match = _NUMBERED.fullmatch(osp.basename(str(path).rstrip('/' + os.sep)))
    return (match[1], int(match[2])) if match else None


def newest_numbered_checkpoint(work_dir):
    """The highest-numbered ``iter_N.pth`` in ``work_dir`` (a file, or the folder a
    DeepSpeed run saves), else the highest ``epoch_N.pth``, or None: by the number,
    not the time, which a copy does not keep. (A run saves one kind or the other:
    mmengine's CheckpointHook by iteration or by epoch.)"""
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint
    if not osp.isdir(work_dir):
        return None
    found = {'iter': [], 'epoch': []}
    for name in os.listdir(work_dir):
        number = checkpoint_number(name)
        path = osp.join(work_dir, name)
        # a DeepSpeed folder with its optimizer shards (its save is not atomic: one cut
        # short has the model states alone)
        if number and (osp.isfile(path) or (is_zero_checkpoint(path) and any(
                f.endswith('optim_states.pt') for f in os.listdir(path)))):
            found[number[0]].append((number[1], path))
    kind = found['iter'] or found['epoch']
    return max(kind)[1] if kind else None


def check_checkpoint_complete(path: str, option: Optional[str] = '--resume') -> None:
    """Raise ValueError if a checkpoint file is truncated or not one of its kind.

    Cheap (reads the zip directory at the end of a torch file, the header of a
    ``.safetensors`` one, not the tensors), so a ``--resume`` (``--load-from``) of a
    file cut short fails at once with its name, before anything is built. A
    ``.safetensors`` file passed unchecked before: cut short, it failed in
    safetensors' reader after the Runner's start-up, in a raw traceback. The error
    names an earlier checkpoint beside it that passes the same check, where there is
    one (:func:`earlier_checkpoint_hint`; ``option``: the way to give it).
    """
    try:
        _check_complete(path)
    except ValueError as e:
        hint = earlier_checkpoint_hint(path, option)
        if not hint:
            raise
        raise ValueError(f'{e}{hint}') from None


def _check_complete(path: str) -> None:
    """:func:`check_checkpoint_complete` without naming an earlier checkpoint."""
    path = str(path)
    if path.endswith('.safetensors'):
        check_safetensors_file(path)
    elif not zipfile.is_zipfile(path):
        check_pickle_start(path)


def intact_earlier_checkpoint(path: str) -> Optional[str]:
    """The newest checkpoint file saved before ``path`` (an ``iter_N.pth`` /
    ``epoch_N.pth`` cut short, empty or gone) in its folder: of its kind, with a lower
    N, passing :func:`check_checkpoint_complete`'s cheap check (newest first; a
    DeepSpeed folder is not taken). None where ``path`` is not numbered, or none is."""
    path = str(path).rstrip(os.sep)
    number = checkpoint_number(path)
    folder = osp.dirname(path)
    if number is None or not osp.isdir(folder or '.'):
        return None
    earlier = []
    for name in os.listdir(folder or '.'):
        found = checkpoint_number(name)
        if found and found[0] == number[0] and found[1] < number[1]:
            earlier.append((found[1], osp.join(folder, name)))
    for _, candidate in sorted(earlier, reverse=True):
        if not osp.isfile(candidate):
            continue
        try:
            _check_complete(candidate)
        except (OSError, ValueError):
            continue
        return candidate
    return None


def earlier_checkpoint_hint(path: str, option: Optional[str] = '--resume') -> str:
    """``'; an earlier checkpoint DIR/iter_4.pth is readable: --resume DIR/iter_4.pth'``
    to end the error about an unusable (or gone) checkpoint ``path`` with, where
    :func:`intact_earlier_checkpoint` finds one ('' otherwise); ``option`` None: without
    the way to give it (the caller says it). Before, the error said nothing of it."""
    return _earlier_hint(intact_earlier_checkpoint(path), option)


def _earlier_hint(earlier: Optional[str], option: Optional[str]) -> str:
    """:func:`earlier_checkpoint_hint`'s words for the checkpoint ``earlier`` found."""
    if earlier is None:
        return ''
    return f'; an earlier checkpoint {earlier} is readable' + (
        f': {option} {earlier}' if option else '')

"""DeepSpeed checkpoint saves that fail together and replace a checkpoint whole.

mmengine's ``DeepSpeedStrategy.save_checkpoint`` has DeepSpeed write the checkpoint
folder ``iter_N.pth`` itself, each process its part, the processes meeting at
barriers. Two faults followed (:func:`fail_together` mends both):

- a write that failed on one process (a full disk, its file-size limit) left the save
  with its error, and the others waited at DeepSpeed's next barrier until the
  collective timeout (30 minutes), then died without a word of the checkpoint;
- the parts were written over those of a folder already there (the same ``iter_N``
  saved again after a ``--resume`` from an earlier checkpoint): a failed or killed
  save left a mix of old and new parts, which ``last_checkpoint`` could name.

So DeepSpeed writes into a hidden sibling folder (``.iter_4.saving.pth``) that takes
the checkpoint's place only once every process has written its part: at every instant
the old checkpoint or the new one is whole on disk, under its own name where Linux's
``renameat2`` can exchange the two folders in one step (:func:`put_in_place`).
"""
import contextlib
import ctypes
import errno
import os
import os.path as osp
import re
import shutil
import sys
import threading
from typing import Optional

from mmsora.utils.atomic_io import fsync_dir, fsync_file, remove_path
# (the names of the staging and aside folders: the checkpoint finders read them too)
from mmsora.utils.checkpoint_choice import (aside_name, checkpoint_number, replaced_midway,
                                            staging_name)

__all__ = ['fail_together', 'staging_name', 'aside_name', 'remove_leftovers',
           'put_in_place', 'remove']


def fail_together(save_checkpoint):
    """``DeepSpeedStrategy.save_checkpoint`` that writes into :func:`staging_name` and
    puts the checkpoint in place once every process has written its part, and whose
    failed write on one process fails the save on every process, at once, each with a
    line that names the failure.

    A failed write of DeepSpeed's (its checkpoint engine's ``makedirs``, ``save`` and
    ``commit``, the copy of its recovery scripts, the NVMe offload's ``copytree``) is
    kept and the process writes no more of the checkpoint, but goes on through
    DeepSpeed's save and its collectives (:class:`_KeptWrites`); then the processes
    tell each other their failures. The one that failed raises its OSError (the errno
    asked of the disk: ``atomic_checkpoint._write_error``), each other one an OSError
    naming that process (``process 1 could not write its part: File too large``), with
    its errno: ``CheckpointHook`` makes either a :class:`CheckpointWriteError`, which
    ``tools/train.py`` says in its one line. The partial folder is removed; the
    checkpoint there before, if any, is left as it was.

    A decoupled checkpoint writer (DeepSpeed's ``checkpoint.writer.decoupled``,
    DataStates) writes after the save returns: its folder is written in place.
    """
    def wrapped(self, filename, **kwargs):
        engine = getattr(self.model, 'model', self.model)
        owner = _owns_folder(engine)
        staging = filename if _decoupled(engine) else staging_name(filename)
        if owner:  # (before DeepSpeed's first barrier: no other process writes yet)
            remove_leftovers(filename)

        def write():
            return _kept_failure(engine, lambda: save_checkpoint(self, staging, **kwargs),
                                 staging, filename)

        def replace():
            if owner and staging != filename:
                try:
                    put_in_place(staging, filename)
                except OSError as e:
                    return e
            return None

        try:
            _stop_together(write(), filename, 'write its part')
            _stop_together(replace(), filename, 'put it in place')
        except OSError:  # (every process is done with the staging folder)
            if owner and staging != filename:
                remove(staging)
            raise
    return wrapped


def _owns_folder(engine) -> bool:
    """Whether this process makes the checkpoint folder and puts it in place: the one
    that makes DeepSpeed's ``save_dir``, rank 0 of the node under node-local storage,
    else of the run."""
    from mmengine.dist import get_rank
    local = engine.use_node_local_storage()
    return (engine.local_rank if local else get_rank()) == 0


def _decoupled(engine) -> bool:
    """Whether the ``engine``'s checkpoint writer writes after its save returns
    (DeepSpeed < 0.17 has none such)."""
    is_decoupled = getattr(engine.checkpoint_engine, 'is_decoupled', None)
    return bool(is_decoupled and is_decoupled())


def _kept_failure(engine, save, staging: str, filename: str) -> Optional[OSError]:
    """Run ``save`` (into ``staging``) with the ``engine``'s writes kept; the OSError of
    this process's first failed write (torch's errno-less RuntimeError asked of the disk
    while its part still takes its room), or None."""
    from mmsora.engine.atomic_checkpoint import _raise_cause_or_none, _write_error
    failures = []
    try:
        with _KeptWrites(engine, failures):
            save()
    except (OSError, RuntimeError) as e:  # a write after DeepSpeed's collectives
        # (mmengine's save_optimizer=False file, process 0's alone)
        if not _failed_write(e):
            raise
        failures.append(e)
    if not failures:
        return None
    first = failures[0]
    if isinstance(first, OSError):
        return first
    error = _raise_cause_or_none(first) or _write_error(staging, first)
    if error.filename == staging:  # (the hidden folder is no name to give the user)
        error = OSError(error.errno, error.strerror, filename)
    error.__cause__ = first
    return error


def _stop_together(mine: Optional[OSError], filename: str, what: str) -> None:
    """Tell the processes each other's failure (``mine``: this process's, or None):
    raise this process's, else the first other one's as an OSError with its errno,
    naming the process and ``what`` it could not do."""
    from mmengine.dist import all_gather_object
    said = all_gather_object(None if mine is None
                             else (mine.errno, mine.strerror or str(mine)))
    if mine is not None:
        raise mine
    for rank, failure in enumerate(said):
        if failure is not None:
            code, text = failure
            raise OSError(code, f'process {rank} could not {what}: {text}', filename)


def _failed_write(error: Exception) -> bool:
    """Whether a save's ``error`` is a failed write: an OSError, or torch's
    RuntimeError over one or for a file it could not write (a KeyboardInterrupt it
    was raised over is raised)."""
    from mmsora.engine.atomic_checkpoint import _raise_cause_or_none, _torch_write_failed
    return isinstance(error, OSError) or _raise_cause_or_none(error) is not None \
        or _torch_write_failed(error)


class _KeptWrites:
    """Within it, a failed write of the DeepSpeed ``engine``'s checkpoint in this thread
    is appended to ``failures`` instead of raised, and the writes after it are skipped:
    the process still takes part in the save's collectives.

    The writes are the checkpoint engine's methods (``makedirs``: process 0's
    ``save_dir`` and each process's folder; ``save``: each part; ``commit``), the
    engine's ``_copy_recovery_script`` and ``shutil.copytree``, which DeepSpeed imports
    inside ``save_checkpoint`` to copy the NVMe-offloaded optimizer state (other threads
    reach the real one)."""

    def __init__(self, engine, failures: list):
        self.failures = failures
        writer = getattr(engine, 'checkpoint_engine', None)
        self.targets = [(obj, name) for obj, name in (
            (writer, 'makedirs'), (writer, 'save'), (writer, 'commit'),
            (engine, '_copy_recovery_script'), (shutil, 'copytree'))
            if callable(getattr(obj, name, None))]
        self.saved = []
        self.thread = None

    def _kept(self, write):
        def guarded(*args, **kwargs):
            if threading.get_ident() != self.thread:
                return write(*args, **kwargs)
            if self.failures:  # this process's part is lost already
                return None
            try:
                return write(*args, **kwargs)
            except (OSError, RuntimeError) as e:
                if not _failed_write(e):
                    raise
                self.failures.append(e)
                return None
        return guarded

    def __enter__(self):
        self.thread = threading.get_ident()
        for obj, name in self.targets:
            self.saved.append((obj, name, vars(obj).get(name, _ABSENT)))
            setattr(obj, name, self._kept(getattr(obj, name)))
        return self.failures

    def __exit__(self, *exc):
        for obj, name, before in reversed(self.saved):
            if before is _ABSENT:
                vars(obj).pop(name, None)
            else:
                setattr(obj, name, before)


_ABSENT = object()


# ---------------------------------------------------------------------------------------
# The staging folder and its replace
# ---------------------------------------------------------------------------------------

# ``.iter_4.saving.pth`` / ``.iter_4.old.pth`` beside ``iter_4.pth``: hidden, so that
# globs (``iter_*.pth``) and the checkpoint finders (checkpoint_choice.py) pass them over
_LEFTOVER = re.compile(r'\.(.+)\.(saving|old)(\.[^.]*)?')


def remove_leftovers(path: str) -> None:
    """Remove, before checkpoint ``path`` is saved, what killed saves left beside the
    checkpoints of its folder: ``path``'s own staging folder (the save writes it
    anew) and every other staging or aside folder, except a pair whose checkpoint is
    missing (a kill between :func:`put_in_place`'s two renames, or a failed put-back:
    the old checkpoint, whole, for the user to put back). ``path``'s own old one is put
    back first: whole and of the same iteration, it is what a failed save leaves."""
    folder = osp.dirname(path) or '.'
    path = osp.join(folder, osp.basename(path))  # (a bare 'iter_4.pth': './iter_4.pth')
    if replaced_midway(path):
        # (before, the old one stayed aside while this save wrote its staging folder:
        # killed while it wrote, it left a part of a checkpoint beside it, taken for a
        # whole new one.) A rename refused here leaves it aside, whole and kept below;
        # this save's own rename into place then fails alike.
        with contextlib.suppress(OSError):
            os.rename(aside_name(path), path)
            fsync_dir(folder)
    # its own, whatever its name (a filename_tmpl of one's own: 'ckpt_{}.pth'), which the
    # save would write into, over a killed save's parts of other processes
    remove(staging_name(path))
    if osp.lexists(path):  # (missing: the pair a kill between the renames left)
        remove(aside_name(path))
    try:
        names = os.listdir(folder)
    except OSError:  # (none yet: DeepSpeed makes it; unreadable: its save says so)
        return
    for name in names:
        match = _LEFTOVER.fullmatch(name)
        target = osp.join(folder, match[1] + (match[3] or '')) if match else None
        if target is None or checkpoint_number(target) is None:
            continue
        pair = not osp.lexists(target) and osp.lexists(aside_name(target))
        if not pair:
            remove(osp.join(folder, name))


def put_in_place(staging: str, path: str) -> None:
    """Make the checkpoint written at ``staging`` the checkpoint ``path``: flushed to
    the disk, then renamed in place, the folder fsynced; the checkpoint there before is
    removed after. Where Linux exchanges the two in one step, ``path`` holds a whole
    checkpoint at every instant; elsewhere (NFS, other systems) the old one is renamed
    to :func:`aside_name` first, and put back if the new one cannot take its place.

    ``staging`` is DeepSpeed's folder, or mmengine's file where the optimizer state is
    not saved (written whole by process 0); nothing there (another node's process 0
    under node-local storage, which that file is not written on): nothing to do."""
    if not osp.lexists(staging):
        return
    _sync_tree(staging)
    if not osp.lexists(path):
        os.rename(staging, path)
        old = None
    elif _exchange(staging, path):
        old = staging
    else:
        old = aside_name(path)
        os.rename(path, old)
        try:
            os.rename(staging, path)
        except BaseException:
            os.rename(old, path)
            raise
    # (the new checkpoint is in place: a failed flush of the folder's entry is not a
    # failed save, which would be removed as a partial one, or its old one kept)
    with contextlib.suppress(OSError):
        fsync_dir(osp.dirname(path) or '.')
    if old is not None:
        remove(old)


remove = remove_path  # (a leftover folder or file, as much of it as can be)


def _sync_tree(path: str) -> None:
    """Flush the file ``path``, or the files and folders under it, to the disk
    (DeepSpeed's ``torch.save`` does not): renamed in place, a power loss may not
    leave them empty."""
    if not osp.isdir(path):
        fsync_file(path)
        return
    for root, _, names in os.walk(path):
        for name in names:
            fsync_file(osp.join(root, name))
        fsync_dir(root)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # (linux/fcntl.h, linux/fs.h)


def _exchange(a: str, b: str) -> bool:
    """Exchange the paths ``a`` and ``b`` in one step (Linux's ``renameat2`` with
    ``RENAME_EXCHANGE``, glibc >= 2.28); False where the system or the file system has
    no such call (NFS, some FUSE file systems), nothing moved."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                 _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)

"""Crash-safe file writes: whole or not at all.

A file is written under a temporary name in its target's folder, fsynced, renamed
over the target (``os.replace`` is atomic on POSIX) and the folder fsynced, so that a
reader, or a run resumed after a kill or a power loss, finds the old file or the new
one whole, never a part of one.

Temporary names are ``.{stem}.tmp-{pid}{ext}`` beside the target (``iter_4.pth`` ->
``.iter_4.tmp-1234.pth``): hidden, so that globs such as ``iter_*.pth`` or
``batch_*.npz`` pass them over; with the process id, so that two processes writing
one target never write into the same temporary file; ending in the target's
extension, since libraries given a path may pick the format from it (PIL, PyAV) or
append one (``np.savez`` adds ``.npz``). :func:`tmp_target` reads such a name back,
for the cleaners of files that killed processes left.
"""
import errno
import os
import os.path as osp
import re
from contextlib import contextmanager
from typing import List, Optional, Tuple

__all__ = ['atomic_file', 'atomic_path', 'atomic_write_bytes', 'fsync_dir', 'fsync_file',
           'make_folders', 'remove_path', 'remove_made_folders', 'tmp_name', 'tmp_target']

_TMP_NAME = re.compile(r'\.(.+)\.tmp-(\d+)(\.[^.]*)?')
# Folder fsync errors that mean "not supported here" rather than "failed": some network
# and FUSE file systems (CIFS, WSL's drvfs, ...) answer EINVAL.
_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.ENOSYS}


def tmp_name(path: str) -> str:
    """The temporary name this process writes ``path`` under (see the module doc)."""
    folder, name = osp.split(os.fspath(path))
    stem, ext = osp.splitext(name)
    return osp.join(folder, f'.{stem}.tmp-{os.getpid()}{ext}')


def tmp_target(name: str) -> Optional[Tuple[str, int]]:
    """``(target file name, pid)`` of a temporary file name, or None for another name.
    (Also reads ``.{name}.tmp-{pid}``, the checkpoints' temporary names before.)"""
    match = _TMP_NAME.fullmatch(osp.basename(name))
    if match is None:
        return None
    return match.group(1) + (match.group(3) or ''), int(match.group(2))


def fsync_file(path: str) -> None:
    """Flush a written file's data to the disk (errors raise: ENOSPC, EIO, ...)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str) -> None:
    """Make the renames in ``folder`` durable.

    Skipped where the system does not support it: a folder that cannot be opened
    (Windows) or whose fsync is refused as unsupported (EINVAL on some network and
    FUSE file systems). By then the file is complete and in place, so a save must not
    fail for want of a feature. Other errors (EIO: the disk failed) raise, since the
    rename may then be lost.
    """
    try:
        fd = os.open(folder or '.', os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str, sync: bool = True, sync_folder: bool = True):
    """Yield a temporary path to write ``path`` through (for libraries that take a
    path: ``torch.save``, safetensors, PIL); when the block ends without error the
    file is fsynced (``sync``), renamed over ``path`` and the folder fsynced
    (``sync_folder``). On an error the temporary file is removed and ``path`` is left
    as it was. The folder is made if missing, as mmengine's ``LocalBackend.put`` does.

    ``sync=False`` keeps a kill from leaving a part of a file, not a power loss.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        if sync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.lexists(tmp):
            os.remove(tmp)
        raise
    if sync_folder:
        fsync_dir(folder)


@contextmanager
def atomic_file(path: str, mode: str = 'wb', sync: bool = True, sync_folder: bool = True,
                **open_kwargs):
    """Yield a file opened for writing (``open(..., mode, **open_kwargs)``) that lands
    at ``path`` only when the block ends without error: :func:`atomic_path`."""
    with atomic_path(path, sync=False, sync_folder=sync_folder) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either unchanged or complete."""
    with atomic_file(path, sync=sync, sync_folder=sync) as f:
        f.write(data)


def make_folders(folder: str) -> List[str]:
    """Make ``folder`` and the folders above it that are missing; returns those made,
    deepest first, for :func:`remove_made_folders` to take back where the work that
    needed them fails. Where ``os.makedirs`` stops part way (no room, a permission),
    the parents it made are removed before its error is raised."""
    made, path = [], osp.abspath(folder)
    while not osp.exists(path) and path != osp.dirname(path):
        made.append(path)
        path = osp.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except BaseException:
        remove_made_folders(made)
        raise
    return made


def remove_made_folders(made: List[str]) -> None:
    """Remove the folders :func:`make_folders` made (``made``, deepest first) where
    they are empty, stopping at the first that is not (something was written)."""
    for folder in made:
        try:
            os.rmdir(folder)
        except FileNotFoundError:  # (os.makedirs stopped before it: a parent's made)
            continue
        except OSError:
            break


def remove_path(path: str) -> None:
    """Remove the folder or file ``path``, as much of it as can be (a failed or killed
    save's leftovers: nothing to say where a part will not go)."""
    import contextlib
    import shutil
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)

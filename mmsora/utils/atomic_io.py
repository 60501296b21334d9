"""Crash-safe file writes: whole or not at all.

A file is written under a temporary name in its target's folder, fsynced, renamed
over the target (``os.replace`` is atomic on POSIX) and the folder fsynced, so that a
reader, or a run resumed after a kill or a power loss, finds the old file or the new
one whole, never a part of one.

Temporary names are ``.{stem}.tmp-{pid}-{host}{ext}`` beside the target
(``iter_4.pth`` -> ``.iter_4.tmp-1234-node07.pth``): hidden, so that globs such as
``iter_*.pth`` or ``batch_*.npz`` pass them over; with the process id, so that two
processes writing one target never write into the same temporary file, and the
machine's name (:func:`host_tag`), since a process id means something on its own
machine alone: a folder on a shared disk (a multi-node run's work dir) holds the
temporary files of processes of other machines too; ending in the target's
extension, since libraries given a path may pick the format from it (PIL, PyAV) or
append one (``np.savez`` adds ``.npz``). :func:`tmp_target` and :func:`tmp_writer`
read such a name back (and the names of earlier versions, without the machine's
name), for the cleaners of files that killed processes left.
"""
import errno
import os
import os.path as osp
import re
import socket
import zlib
from contextlib import contextmanager
from typing import List, Optional, Tuple

__all__ = ['atomic_file', 'atomic_path', 'atomic_write_bytes', 'fsync_dir', 'fsync_file',
           'host_tag', 'make_folders', 'proc_stat', 'remove_path', 'remove_made_folders', 'tmp_name',
           'tmp_target', 'tmp_writer']

# (the host part is optional: the names of earlier versions have none)
_TMP_NAME = re.compile(r'\.(.+)\.tmp-(\d+)(?:-([A-Za-z0-9_-]+))?(\.[^.]*)?')
# Folder fsync errors that mean "not supported here" rather than "failed": some network
# and FUSE file systems (CIFS, WSL's drvfs, ...) answer EINVAL.
_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.ENOSYS}


def host_tag() -> str:
    """This machine's name as temporary names carry it: the host name with each
    character other than a letter, a digit or '-' made '_' (a dot would be read as the
    start of the extension); one longer than 32 characters cut to 23 and a hash of the
    whole name (file names have 255 bytes). Where the process ids are a namespace's
    (Linux: containers sharing the host's name, Docker's ``--network host``, Kubernetes'
    ``hostNetwork``), its id follows, ``_`` and hex: a process id means something in
    its own namespace alone."""
    host = socket.gethostname()
    tag = re.sub(r'[^A-Za-z0-9-]', '_', host)
    if len(tag) > 32:
        tag = f'{tag[:23]}-{zlib.crc32(host.encode()):08x}'
    return tag + pid_namespace()


def pid_namespace() -> str:
    """``_`` and the hex id of this process's PID namespace (Linux), '' where it cannot
    be read (no /proc: one namespace as far as this can tell)."""
    try:
        return f'_{os.stat("/proc/self/ns/pid").st_ino:x}'
    except OSError:
        return ''


def proc_stat(pid: int) -> Optional[Tuple[str, str]]:
    """``(state, start time)`` of process ``pid`` of this machine from /proc (the start
    time in clock ticks since boot: it tells a process from a later one given the same
    pid, after a reboot); None where unknown."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rpartition(')')[2].split()
        return fields[0], fields[19]  # (fields 3 and 22)
    except (OSError, IndexError):
        return None


def tmp_name(path: str) -> str:
    """The temporary name this process writes ``path`` under (see the module doc)."""
    folder, name = osp.split(os.fspath(path))
    stem, ext = osp.splitext(name)
    host = host_tag()
    return osp.join(folder, f'.{stem}.tmp-{os.getpid()}{"-" + host if host else ""}{ext}')


def tmp_target(name: str) -> Optional[Tuple[str, int]]:
    """``(target file name, pid)`` of a temporary file name, or None for another name.
    (Also reads ``.{stem}.tmp-{pid}{ext}``, without the machine's name, and
    ``.{name}.tmp-{pid}``, the temporary names of earlier versions.)"""
    match = _TMP_NAME.fullmatch(osp.basename(name))
    if match is None:
        return None
    return match.group(1) + (match.group(4) or ''), int(match.group(2))


def tmp_writer(name: str) -> Optional[Tuple[int, Optional[str]]]:
    """``(pid, host)`` of the process that writes under the temporary name ``name``:
    its process id and :func:`host_tag` of its machine (None: a name of an earlier
    version, which does not say); None for another name."""
    match = _TMP_NAME.fullmatch(osp.basename(name))
    if match is None:
        return None
    return int(match.group(2)), match.group(3)


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

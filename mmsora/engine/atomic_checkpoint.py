"""Crash-safe checkpoints: a mend for mmengine 0.10.7.

mmengine writes a checkpoint in place (``LocalBackend.put`` opens the final path with
``'wb'``), so a kill or a full disk mid-write leaves a truncated ``iter_N.pth`` under
its final name. Its ``CheckpointHook`` also deletes the oldest checkpoint *before*
writing the new one (with ``max_keep_ckpts=1`` a failed write leaves no checkpoint at
all) and writes ``last_checkpoint`` in place (a kill there leaves it empty, and
``--resume`` then fails). :func:`make_checkpoints_atomic` mends both:

1. ``LocalBackend.put`` writes to a hidden temporary file in the target's folder,
   fsyncs it, renames it over the target (``os.replace`` is atomic on POSIX) and
   fsyncs the folder (mmsora.utils.atomic_io). A failed or killed write leaves the
   target as it was.
   mmengine's ``save_checkpoint`` serialises the whole checkpoint into an
   ``io.BytesIO`` first and hands its bytes to ``put``: a copy of the checkpoint in
   the saving process's memory at every save (measured 10.3 GB for DiT-XL/2 with its
   EMA and AdamW state, docs/reliability.md). :func:`save_checkpoint` takes its place
   for local files and streams ``torch.save`` into the temporary file instead.
2. ``CheckpointHook`` saves first, then points ``last_checkpoint`` at the new file
   (atomically), and only then deletes checkpoints beyond ``max_keep_ckpts``. A save
   that fails raises :class:`CheckpointWriteError`, naming the file and the previous
   checkpoint, which is intact. DeepSpeed writes its folder's files with ``torch.save``
   given a path, whose failed write is a RuntimeError naming no errno: the errno is
   asked of the disk after the fact, and the partial folder removed (one process) or
   named. A pointer that cannot be written after a checkpoint saved whole raises
   :class:`CheckpointPointerError`, naming that checkpoint to ``--resume`` from.
3. ``LocalVisBackend.add_config``, which copies the run's config into
   ``WORK_DIR/TIMESTAMP/vis_data/config.py`` as the Runner starts, writes it the same
   way: a full disk (or the file-size limit) there ended the start-up with that copy
   cut short, to be read later as the run's config.

Temporary files and folders that killed processes left are removed at a later save
(:func:`remove_stale_tmp_files` says when).
"""
import contextlib
import errno
import os
import os.path as osp
import shutil
import sys
import time
from typing import Optional

import mmengine.runner
import mmengine.runner.checkpoint as mm_checkpoint
import mmengine.runner.runner as mm_runner
import torch
from mmengine.dist import get_world_size, is_main_process
from mmengine.fileio import get_file_backend
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.visualization import LocalVisBackend
from mmengine.visualization.vis_backend import force_init_env

from mmsora.engine.log_files import naming_os_errors
from mmsora.utils.atomic_io import (atomic_file, atomic_path, atomic_write_bytes, host_tag,
                                    proc_stat, remove_path, tmp_name, tmp_writer)
from mmsora.utils.checkpoint_choice import replaced_midway
from mmsora.utils.cli import RunError

__all__ = ['CheckpointWriteError', 'CheckpointPointerError', 'save_checkpoint',
           'make_checkpoints_atomic', 'MMENGINE_SAVE_CHECKPOINT']


class CheckpointWriteError(RunError):
    """A checkpoint could not be written (full disk, quota, permissions).

    Args:
        filename (str): The checkpoint; the failed write left no part of it (or
            ``left``).
        error (OSError): What the write met.
        previous (str, optional): The checkpoint saved before (``last_checkpoint``),
            which is intact; None where none was.
        left (str, optional): The part of the checkpoint the failed write left (a
            DeepSpeed folder that other processes were writing too); None: nothing.

    Its message says all three; tools/train.py says a full disk's (``error.errno``
    ENOSPC, EDQUOT, EROFS, EFBIG) in the one line of a run that a full disk ended
    instead (:func:`~mmsora.engine.graceful_stop.stopped_by_full_disk`).
    """

    def __init__(self, filename: str, error: OSError, previous: Optional[str] = None,
                 left: Optional[str] = None):
        self.filename, self.error, self.previous, self.left = filename, error, previous, left
        kept = (f'the previous checkpoint {previous} is intact (--resume continues '
                'from it)' if previous else 'no earlier checkpoint exists')
        part = f'; its partial {left} is left (remove it)' if left else ''
        super().__init__(f'cannot write checkpoint {filename}: {error.strerror or error}'
                         f'{part}; {kept}')


class CheckpointPointerError(CheckpointWriteError):
    """The checkpoint ``saved`` was written whole, but ``last_checkpoint``
    (``filename``) could not be made to name it: it still names ``previous``, which
    a plain ``--resume`` would take."""

    def __init__(self, filename: str, error: OSError, saved: str,
                 previous: Optional[str] = None):
        self.filename, self.error, self.previous, self.left = filename, error, previous, None
        self.saved = saved
        RunError.__init__(self, f'cannot write {filename}: {error.strerror or error}; the '
                          f'checkpoint {saved} is whole, but {filename} still names '
                          f'{previous or "none"}: continue with --resume {saved}')


# mmengine's own writer (written in place), kept before make_checkpoints_atomic replaces
# it: what save_checkpoint writes through, and what tools/benchmark_checkpoint.py times.
MMENGINE_SAVE_CHECKPOINT = mm_checkpoint.save_checkpoint


def save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
    """mmengine's ``save_checkpoint``; a local file is written by ``torch.save``
    straight into its temporary file (atomically, as ``LocalBackend.put``) instead of
    through a copy of the whole checkpoint in memory. Other backends go to mmengine."""
    filename = str(filename)
    if (file_client_args is None and not filename.startswith('pavi://') and isinstance(
            get_file_backend(filename, backend_args=backend_args), LocalBackend)):
        with atomic_file(filename) as f:
            try:
                torch.save(checkpoint, f)
            except RuntimeError as e:
                _raise_cause(e, (OSError, KeyboardInterrupt))
        return
    try:
        MMENGINE_SAVE_CHECKPOINT(checkpoint, filename, file_client_args=file_client_args,
                                  backend_args=backend_args)
    except RuntimeError as e:
        _raise_cause(e, KeyboardInterrupt)


def _raise_cause(error, kinds):
    """In the handler of ``torch.save``'s ``error``: raise what it hides, one of
    ``kinds`` raised inside the save, over which torch's zip writer, closing the
    archive, raised its own error ('unexpected pos'), else ``error`` itself. A failed
    write (full disk) is an OSError; a second Ctrl-C a KeyboardInterrupt, which so
    ends the run with the usual 'interrupted' line and exit code 130 (it was a
    47-line traceback and exit code 1)."""
    cause = error.__context__
    while cause is not None and not isinstance(cause, kinds):
        cause = cause.__context__
    if cause is None:
        raise error
    raise cause from None


def _raise_cause_or_none(error):
    """In the handler of a save's RuntimeError ``error``: raise a KeyboardInterrupt it
    was raised over (torch's zip writer closing the archive, a second Ctrl-C under
    DeepSpeed); return an OSError it was raised over, else None."""
    cause = error.__context__
    while cause is not None and not isinstance(cause, (OSError, KeyboardInterrupt)):
        cause = cause.__context__
    if isinstance(cause, KeyboardInterrupt):
        raise cause from None
    return cause


# A temporary entry whose writer cannot be asked from here (another machine's, or one
# named by an earlier version) is a leftover once nothing in it changed for this long.
STALE_TMP_AGE_S = 3600


def remove_stale_tmp_files(folder):
    """Remove the temporary files and folders (mmsora.utils.atomic_io's names,
    ``.NAME.tmp-PID-HOST``) in ``folder`` whose writers are gone: killed processes'.

    The rule, the same for a file and a folder (tools/export_denoiser.py writes a
    diffusers folder ``--out W/dit`` as ``W/.dit.tmp-PID-HOST``):

    - HOST is this machine's (``atomic_io.host_tag``: its name and its process-id
      namespace): removed where process PID does not run here, or runs but started
      after the entry was last modified (another process given a killed writer's
      PID), or is a zombie; a running one is writing it (an export, tools/infer.py's
      outputs, into a work dir where training runs). A killed process's is removed at
      the next save.
    - HOST is another machine's (a work dir on a disk that several nodes share: a
      multi-node run, an export on another node), whose PID means nothing here:
      removed once it has not been modified for :data:`STALE_TMP_AGE_S` (an hour; a
      folder's age is that of the newest entry in it).
    - no HOST (the names of versions before Dec 2026, which did not say the machine):
      removed where PID does not run here and it has not been modified for an hour.

    DeepSpeed's staging and aside folders (``.iter_N.saving.pth``, ``.iter_N.old.pth``,
    which the processes of every node write into during a save) are no temporary
    names here: ``deepspeed_save.remove_leftovers`` judges them."""
    names = os.listdir(folder) if osp.isdir(folder) else []
    here = host_tag()
    for name in names:
        writer = tmp_writer(name)
        if writer is None:
            continue
        pid, host = writer
        path = osp.join(folder, name)
        if host == here:
            stale = pid != os.getpid() and not _writer_running(pid, path)
        else:
            stale = ((host is not None or not _running(pid))
                     and _unmodified_for(path) >= STALE_TMP_AGE_S)
        if stale:
            remove_path(path)


def _unmodified_for(path: str) -> float:
    """Seconds since ``path`` (a file; a folder: the newest entry in it, itself too)
    was last modified; 0 where none of it can be read (taken for one being written)."""
    paths = [path]
    if osp.isdir(path) and not osp.islink(path):
        for root, folders, files in os.walk(path):
            paths += [osp.join(root, name) for name in folders + files]
    mtimes = []
    for name in paths:
        with contextlib.suppress(OSError):  # (removed meanwhile)
            mtimes.append(os.lstat(name).st_mtime)
    return time.time() - max(mtimes) if mtimes else 0.0


def _writer_running(pid: int, path: str) -> bool:
    """Whether process ``pid`` of this machine runs and can be the writer of ``path``:
    it started before ``path`` was last modified (a later process given the pid of a
    killed writer is not it: a leftover was kept for as long as that one ran) and is
    no zombie."""
    if not _running(pid):
        return False
    stat = proc_stat(pid)
    try:
        with open('/proc/stat') as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith('btime '))
    except (OSError, ValueError, IndexError, StopIteration):
        boot = None
    if stat is None or boot is None:
        return True  # (no /proc: as running)
    state, ticks = stat
    if state == 'Z':
        return False
    started = boot + int(ticks) / os.sysconf('SC_CLK_TCK')
    # (a minute's slack: btime is whole seconds, and a shared disk's server stamps the
    # times by its own clock)
    return started <= time.time() - _unmodified_for(path) + 60.0


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's too)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # (OverflowError: no such pid at all)
        return False
    except OSError:  # (EPERM: another user's)
        return True
    return True


def _atomic_put(self, obj, filepath):
    """``LocalBackend.put`` (write bytes to a file), atomically. A failed write's
    OSError names the file (a full disk's line: graceful_stop.py)."""
    with naming_os_errors(filepath):
        atomic_write_bytes(str(filepath), obj)


@force_init_env  # (as mmengine's: the backend makes its folder at its first use)
def _atomic_add_config(self, config, **kwargs):
    """``LocalVisBackend.add_config`` (the run's config into ``vis_data/config.py``),
    atomically: a failed write leaves no file there, and its OSError names the file."""
    path = self._config_save_file
    with naming_os_errors(path), atomic_path(path) as tmp:
        config.dump(tmp)


def _read_last_checkpoint(work_dir):
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


# What torch's zip writer raises when a write into a file it opened itself (a path, as
# DeepSpeed's TorchCheckpointEngine gives it) fails: the C++ stream names no errno.
_TORCH_WRITE_FAILED = ('unexpected pos', 'iostream error', 'file write failed',
                       'cannot be opened')


def _torch_write_failed(error: RuntimeError) -> bool:
    """Whether ``error`` (or one it was raised over) is torch's failed file write."""
    while error is not None:
        if isinstance(error, RuntimeError) and any(
                text in str(error) for text in _TORCH_WRITE_FAILED):
            return True
        error = error.__context__
    return False


def _write_error(path: str, error: RuntimeError) -> OSError:
    """The OSError behind torch's failed write of ``path`` (a file, or a DeepSpeed
    folder), asked of the system after the fact, while the part written still takes
    its room: a small write beside it (ENOSPC, EDQUOT, EROFS, ...; EFBIG under a
    file-size limit below its 64 kB), else EFBIG where a file of the write grew to the
    file-size limit (``ulimit -f``), else ENOSPC where the disk has next to no room
    left, less than the write took (it filled the disk; the small write fitted in what
    was left or freed since), else an OSError with torch's words. A limit above every file written
    is not what stopped the write: naming it sent the user to raise it (a limit of
    100 GB, a full disk)."""
    folder = path if osp.isdir(path) else osp.dirname(path) or '.'
    probe = tmp_name(osp.join(folder, 'write-probe'))  # (hidden; a killed one is removed)
    try:
        with open(probe, 'wb') as f:
            f.write(bytes(1 << 16))
    except OSError as e:
        return OSError(e.errno, e.strerror, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    written = _files_written(path)
    limit = file_size_limit()
    if limit is not None and max((st.st_size for st in written), default=0) >= limit:
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG), path)  # (the kernel lets
        # a file grow to the limit)
    try:
        room = shutil.disk_usage(folder).free  # (what a process not root may take)
    except OSError:
        room = None
    taken = sum(st.st_blocks * 512 for st in written)  # (blocks: a sparse file takes none)
    if room is not None and room < min(taken, NEARLY_FULL):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return OSError(f'torch could not write it ({str(error).splitlines()[0]})')


# A disk the failed write filled has next to nothing left (the write takes what there
# is); one with more room than this failed it otherwise (EIO on a network disk after
# 16 GB of a 30 GB room was named a full disk, review aq)
NEARLY_FULL = 64 << 20


def _files_written(path: str) -> list:
    """The ``os.stat`` of each file a failed save left of ``path`` (a file, or a
    folder's files)."""
    if not osp.isdir(path):
        paths = [path]
    else:
        paths = [osp.join(root, name) for root, _, names in os.walk(path) for name in names]
    found = []
    for name in paths:
        with contextlib.suppress(OSError):
            found.append(os.stat(name))
    return found


def file_size_limit() -> Optional[int]:
    """This process's file-size limit in bytes (``ulimit -f``), or None: none (an EFBIG
    is then the file system's largest file: graceful_stop.no_room_fix)."""
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError):  # (no such limit here)
        return None
    return None if limit == resource.RLIM_INFINITY else limit


def _remove_partial(path: str, previous: Optional[str]) -> Optional[str]:
    """Remove what a failed save left of ``path`` where this is the only process (other
    processes may still be writing into a DeepSpeed folder); returns what is left."""
    if not osp.lexists(path) or (previous and osp.realpath(previous) == osp.realpath(path)):
        return None
    if get_world_size() > 1:
        return path
    remove_path(path)
    return path if osp.lexists(path) else None


def _save_checkpoint_with_step(self, runner, step, meta):
    """``CheckpointHook._save_checkpoint_with_step``: save, point, then prune."""
    outdated = None
    if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                        and self.keep_ckpt_ids[-1] == step):
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            outdated = self.keep_ckpt_ids.popleft()
        self.keep_ckpt_ids.append(step)
        # Recorded before saving: the checkpoint carries the list it belongs to.
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

    ckpt_filename = self.filename_tmpl.format(step)
    self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
    runner.message_hub.update_info('last_ckpt', self.last_ckpt)
    if is_main_process() and isinstance(self.file_backend, LocalBackend):
        remove_stale_tmp_files(self.out_dir)
    # (a DeepSpeed save stopped between its two renames left the checkpoint's old
    # folder aside, whole, which this save puts back before it writes:
    # deepspeed_save.remove_leftovers; removed as this save's partial one, it was lost)
    existed = replaced_midway(self.last_ckpt) or osp.lexists(self.last_ckpt)
    try:
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta,
            by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
    except (OSError, RuntimeError) as e:
        # DeepSpeed writes a folder (an OSError of its own there, copying its
        # zero_to_fp32.py, leaves a part of it too), its files by torch.save given a
        # path, whose failed write is a RuntimeError: torch's C++ stream names no errno
        failed = e if isinstance(e, OSError) else _raise_cause_or_none(e)
        if failed is None and not _torch_write_failed(e):
            raise
        previous = _read_last_checkpoint(runner.work_dir)
        if failed is None:
            failed = _write_error(self.last_ckpt, e)  # (before the part left is removed)
        # (only what this save made: a DeepSpeed folder there before it is the earlier
        # save's, whole, the new one written beside it and put in its place once every
        # process had written its part, deepspeed_save.py; removing it lost a checkpoint
        # other than last_checkpoint's)
        left = (_remove_partial(self.last_ckpt, previous) if not existed and (
            isinstance(e, RuntimeError) or osp.isdir(self.last_ckpt)) else None)
        raise CheckpointWriteError(self.last_ckpt, failed, previous, left) from e
    if not is_main_process():
        return
    pointer = osp.join(runner.work_dir, 'last_checkpoint')
    try:
        with naming_os_errors(pointer):  # (a full disk's line names it)
            atomic_write_bytes(pointer, self.last_ckpt.encode())
    except OSError as e:  # the checkpoint is whole: it is the one to resume from
        self.unpointed = self.last_ckpt  # (graceful_stop.interrupted_at says so)
        raise CheckpointPointerError(pointer, e, self.last_ckpt,
                                     _read_last_checkpoint(runner.work_dir)) from e
    self.unpointed = None
    if outdated is not None:
        path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # DeepSpeed saves folders
            self.file_backend.rmtree(path)


def make_checkpoints_atomic():
    """Apply the mends above (idempotent). mmengine's modules that imported
    ``save_checkpoint`` by name get :func:`save_checkpoint` too; its DeepSpeed strategy
    module, when imported later, through ``mend_mmengine_deepspeed``."""
    LocalBackend.put = _atomic_put
    LocalVisBackend.add_config = _atomic_add_config
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step
    for module in (mm_checkpoint, mm_runner, mmengine.runner,
                   sys.modules.get('mmengine._strategy.deepspeed')):
        if module is not None:
            module.save_checkpoint = save_checkpoint

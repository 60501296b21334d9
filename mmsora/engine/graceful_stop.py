"""Stop a training run between iterations on Ctrl-C or SIGTERM, with a checkpoint.

A KeyboardInterrupt raised anywhere broke off what was under way (a checkpoint's
save included), and SIGTERM, which a scheduler sends at a job's time limit or
preemption (slurm; torchrun passes it on to its processes, then kills them 30 s
later), ended the run at once, losing every iteration since the last checkpoint.

:func:`stop_gracefully` installs signal handlers and a hook. On the first signal the
run finishes the iteration under way (the optimizer step of an accumulated step,
too) with all its hooks (a due checkpoint, an evaluation) and stops before the next
one; its checkpoint is the one ``--resume`` continues from:

- Ctrl-C (one-process runs): the checkpoint hook's own checkpoint, where one was
  due; a second Ctrl-C stops at once. Under a launcher every process gets Ctrl-C at
  its own point, and the processes stop at once as before.
- SIGTERM (every run): a checkpoint of this iteration is saved if none was due.
  Further SIGTERMs change nothing (a launcher may pass on the one the processes
  got already). Under several processes the processes agree each iteration on
  whether any of them was asked to stop (one small all-reduce), so that all stop
  after the same iteration and save it together.

The stop is :class:`~mmsora.utils.cli.Interrupted`: one line naming the checkpoint
(and the iterations not in it), exit 130 for Ctrl-C and 143 for SIGTERM, as a shell
reports them. A run that an error ends after an iteration of its own (another
process killed, out of memory) gets the same words under its traceback
(:func:`stopped_by_error`); one that a full disk ends (a checkpoint's save too), in one
line with the file (:func:`stopped_by_full_disk`).

Data-loader workers leave the decision to the main process, which shuts them down
when it stops. A scheduler signals every process of the job, workers included, and
torch's workers died of SIGTERM (torch's handler in a worker passes on any SIGTERM
the main process did not send); the main process then failed at once with
'DataLoader worker (pid N) is killed by signal: Terminated'. Workers started after
:func:`stop_gracefully` ignore a SIGTERM from anyone but the main process, and end
on the main process's own as before. This covers workers the main process forks (the
default start method on Linux); spawn / forkserver workers
(``multiprocessing_context``) die of the scheduler's SIGTERM as before.
"""
import errno
import os
import os.path as osp
import signal
from typing import Optional

import torch
from mmengine.dist import all_reduce, barrier, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook

from mmsora.engine.accumulation import optimizer_stepped
from mmsora.engine.atomic_checkpoint import (CheckpointPointerError, CheckpointWriteError,
                                             file_size_limit)
from mmsora.utils.cli import Interrupted

__all__ = ['stop_gracefully', 'interrupted_at', 'stopped_by_error', 'stopped_by_full_disk',
           'checkpoint_due', 'GracefulStopHook']

# What each signal asks, ordered: the larger wins when processes were asked both.
_STOP, _SAVE_AND_STOP = 1, 2
_ASKS = {signal.SIGINT: _STOP, signal.SIGTERM: _SAVE_AND_STOP}
_NAMES = {_STOP: 'Ctrl-C', _SAVE_AND_STOP: 'SIGTERM'}
_EXIT_CODES = {_STOP: 130, _SAVE_AND_STOP: 143}


def interrupted_at(runner, done: int, sigterm_hint: bool = True,
                   fix: Optional[str] = None, intact: bool = False,
                   elsewhere: Optional[str] = None) -> str:
    """Where a stopped run stands: the iterations it finished (``done``, or more where
    the train step of one more had finished: a stop in its hooks, a checkpoint's save
    say, which mmengine counts only after them) and the checkpoint that ``--resume``
    continues from (or that none was saved yet), with the iterations not in it; with
    ``sigterm_hint`` (a Ctrl-C's stop), that SIGTERM would have saved them. ``fix``:
    what to do before the run goes on (``'free space there'``); ``intact``: say that
    the checkpoint is (a later one's save failed); ``elsewhere``: where the run goes
    on instead of its work dir (``fix`` then says why), from its checkpoint's path
    (``last_checkpoint`` names the one in the work dir). A checkpoint saved whole that
    ``last_checkpoint`` could not be made to name is the one named, with its path
    after ``--resume`` (a plain one would take the older one the file names)."""
    from mmsora.utils.checkpoint_choice import checkpoint_number, last_checkpoint
    hook = _graceful_stop_hook(runner)
    done = max(done, hook.finished if hook is not None else 0)
    latest, resume = last_checkpoint(runner.work_dir), '--resume'
    where, notes = f'after iteration {done}', ['intact'] if intact and latest else []
    unpointed = _unpointed_checkpoint(runner)
    if unpointed is not None and unpointed != latest:  # a plain --resume takes latest
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        notes = [f'saved whole; {pointer} could not be updated and names '
                 f'{latest or "none"}']
        latest, resume = unpointed, f'--resume {unpointed}'
    number = checkpoint_number(latest) if latest is not None else None
    saved = number[1] if number and number[0] == 'iter' else None
    if saved is not None and saved < done:
        notes.append(f'iteration {done} is not in it' if saved + 1 == done
                     else f'iterations {saved + 1}-{done} are not in it')
    if sigterm_hint and (notes or (latest is None and done)) \
            and _checkpoint_hook(runner) is not None:  # (a run that keeps none: no hint)
        notes.append('SIGTERM saves the iteration it stops at')
    lost = f' ({"; ".join(notes)})' if notes else ''
    if latest is None:
        again = f': {fix}, then run the same command again' if fix else ''
        if elsewhere:
            again = f': {fix}: run the same command again with {elsewhere}'
        return f'{where}; no checkpoint was saved yet{lost}{again}'
    if elsewhere:
        return (f'{where}; the last checkpoint is {latest}{lost}: {fix}: continue with '
                f'--resume {latest} and {elsewhere}')
    return (f'{where}; the last checkpoint is {latest}{lost}: '
            f'{f"{fix}, then " if fix else ""}continue with {resume} '
            f'(--work-dir {runner.work_dir})')


def _unpointed_checkpoint(runner) -> Optional[str]:
    """The checkpoint a checkpoint hook saved whole but could not point
    ``last_checkpoint`` at (atomic_checkpoint.py), or None."""
    return next((h.unpointed for h in runner.hooks if isinstance(h, CheckpointHook)
                 and getattr(h, 'unpointed', None)), None)


def _graceful_stop_hook(runner):
    """The run's :class:`GracefulStopHook`, or None."""
    return next((h for h in runner.hooks if isinstance(h, GracefulStopHook)), None)


def stopped_by_error(runner) -> Optional[str]:
    """Where a run that an error ended stands (:func:`interrupted_at`'s words), or
    None when no iteration of its own had finished: what failed then was its start
    (the resume, the first batch), which ``--resume`` would only repeat."""
    hook = _graceful_stop_hook(runner)
    if hook is None or not hook._ran:
        return None
    where = interrupted_at(runner, runner.iter, sigterm_hint=False)
    return f'training stopped by this error {where}'


# What to do, before the run goes on, about a write that found no room: space (ENOSPC,
# EDQUOT) unless the file system is read-only or the file at a size limit. EFBIG is the
# process's file-size limit (ulimit -f) where one is set, else the file system's largest
# file (FAT32 / exFAT-formatted USB disks: 4 GB; some network file systems), which no
# ulimit raises: another file system does. Freed space would not mend either, and a
# --resume there would fail at the same checkpoint again.
LARGEST_FILE = "the file system's largest file size was met (FAT32: 4 GB)"
ANOTHER_FILE_SYSTEM = 'a --work-dir on another file system (ext4, xfs, NTFS)'


def at_largest_file(code: int) -> bool:
    """Whether a write's error ``code`` is EFBIG with no file-size limit set: the file
    system's largest file."""
    return code == errno.EFBIG and file_size_limit() is None


def no_room_fix(code: int, work_dir: Optional[str] = None) -> str:
    """What to do about a write's error ``code`` on the file's disk ('there'); with
    ``work_dir``, for an error that names no file (a writer that does not name it), on
    the work dir's disk, where the run's files go."""
    if code == errno.EFBIG:
        if at_largest_file(code):
            return f'{LARGEST_FILE}: give {ANOTHER_FILE_SYSTEM}'
        return 'raise the file-size limit (ulimit -f)'
    read_only = code == errno.EROFS
    if work_dir is None:
        return 'make it writable' if read_only else 'free space there'
    disk = f'the disk of {work_dir}'
    return f'make {disk} writable' if read_only else f'free space on {disk}'


def stopped_by_full_disk(runner, error) -> str:
    """The one line for a run that a write on a full disk (or over a quota, on a file
    system turned read-only, at the file-size limit) ended: the file, the error, where
    the run stands (:func:`interrupted_at`'s words) and what to do. Unlike
    :func:`stopped_by_error` it names the checkpoint before an iteration of the run's
    own too: once there is space, the same command does not only repeat the failure.

    Args:
        runner: The run.
        error (OSError | CheckpointWriteError): The write's error; a checkpoint's
            save's (atomic_checkpoint.py) adds that the failed file left no partial
            file (or which part is left) and that the last checkpoint is intact; a
            ``CheckpointPointerError`` names ``last_checkpoint``, its checkpoint whole.
    """
    checkpoint = isinstance(error, CheckpointWriteError)
    pointer = isinstance(error, CheckpointPointerError)  # (its checkpoint is whole)
    failed = error.error if checkpoint else error
    loop = getattr(runner, '_train_loop', None)  # (runner.iter would build it)
    name = error.filename if checkpoint else failed.filename
    largest = at_largest_file(failed.errno)  # (the run goes on in another work dir)
    fix = LARGEST_FILE if largest else no_room_fix(failed.errno,
                                                   None if name else runner.work_dir)
    where = interrupted_at(runner, getattr(loop, 'iter', 0), sigterm_hint=False, fix=fix,
                           intact=checkpoint and not pointer,
                           elsewhere=ANOTHER_FILE_SYSTEM if largest else None)
    what = f'checkpoint {name}' if checkpoint and not pointer else name or 'a file'
    left = ''
    if checkpoint and not pointer:
        left = (f' (its partial {error.left} is left: remove it)' if error.left
                else ' (no partial file left)')
    return f'cannot write {what}: {failed.strerror or failed}{left}; training stopped {where}'


def _checkpoint_hook(runner):
    """The run's iteration-based checkpoint hook, or None."""
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook) and not hook.by_epoch:
            return hook
    return None


def _saved_at(runner, done: int) -> bool:
    """Whether the checkpoint hook saved iteration ``done`` (every process knows: the
    hook records the file it saves on all of them)."""
    hook = _checkpoint_hook(runner)
    last = runner.message_hub.get_info('last_ckpt')
    return hook is not None and isinstance(last, str) and \
        osp.basename(last) == hook.filename_tmpl.format(done)


def checkpoint_due(runner) -> bool:
    """Whether the checkpoint hook saves after the iteration under way (read in
    ``after_train_iter``, where ``runner.iter`` has not counted it yet)."""
    hook = _checkpoint_hook(runner)
    return hook is not None and bool(
        hook.every_n_train_iters(runner, hook.interval, hook.save_begin)
        or (hook.save_last and hook.is_last_train_iter(runner)))


class GracefulStopHook(Hook):
    """Stops the run before the next iteration once a signal asked for it.

    The decision is taken at the start of each iteration (``before_train_iter``),
    after every hook of the previous one: a signal during an evaluation or a sampling
    hook stops the run when they are done, not one more iteration later."""

    priority = 'VERY_HIGH'  # first at the start of an iteration

    def __init__(self):
        self.asked = 0  # 0, _STOP or _SAVE_AND_STOP
        self.ctrl_c = False  # a Ctrl-C came (a second one stops at once)
        self._ran = False  # an iteration of this run has finished
        self.finished = 0  # the iterations whose train step finished (runner.iter
        # counts one only after its after_train_iter hooks)

    def _agreed(self) -> int:
        """The strongest ask of any process (the same on all of them)."""
        if get_world_size() == 1:
            return self.asked
        asked = torch.tensor([self.asked], dtype=torch.int32)
        all_reduce(asked, op='max')
        return int(asked.item())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._ran = True  # (first of the iteration's hooks: VERY_HIGH)
        self.finished = runner.iter + 1

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        asked = self._agreed()
        if not asked or (self._ran and not optimizer_stepped(runner)):  # (amid an
            return  # accumulated step: its last micro-batch stops)
        done = runner.iter  # the iterations finished (this one has not started)
        if asked == _SAVE_AND_STOP and self._ran and not _saved_at(runner, done):
            self._save(runner, done)
        self._stop(runner, asked, done)

    @staticmethod
    def _save(runner, done: int):
        hook = _checkpoint_hook(runner)
        if hook is None:  # default_hooks.checkpoint=None: the run keeps none
            return
        from mmsora.engine.hooks.rng_state_hook import RNGStateHook
        for rng in (h for h in runner.hooks if isinstance(h, RNGStateHook)):
            rng.gather(runner)  # every process's RNG states, for process 0 to save
        runner.logger.info(f'Saving checkpoint at {done} iterations (stopping on SIGTERM)')
        hook._save_checkpoint_with_step(runner, done, meta=dict(epoch=runner.epoch,
                                                                 iter=done))
        if get_world_size() > 1:  # process 0 may still be writing: srun's
            barrier()  # --kill-on-bad-exit would kill it when another one exits

    @staticmethod
    def _stop(runner, asked, done):
        if get_rank() != 0:  # process 0 says where the run stands
            raise Interrupted('', exit_code=_EXIT_CODES[asked], quiet=True)
        by = ' by SIGTERM' if asked == _SAVE_AND_STOP else ''
        where = interrupted_at(runner, done, sigterm_hint=asked == _STOP)
        raise Interrupted(f'{by} {where}'.strip(),
                          exit_code=_EXIT_CODES[asked])


def stop_gracefully(runner, ctrl_c: bool = True):
    """Install the handlers (SIGTERM; SIGINT too with ``ctrl_c``) and the hook for
    ``runner``. Returns what puts the former handlers back and takes the hook off
    the runner. Outside the main thread, where Python takes no signal handlers, it
    changes nothing."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    hook, main_pid = GracefulStopHook(), os.getpid()
    runner.register_hook(hook)

    def say(text):  # os.write: a print here could break into one under way
        os.write(2, (text + '\n').encode())  # (a 'reentrant call' RuntimeError)

    def ask(signum, frame):
        if os.getpid() != main_pid:  # a child forked by this process
            if signum == signal.SIGTERM:  # (data-loader workers have torch's own
                signal.signal(signum, signal.SIG_DFL)  # handler): it ends as it would
                os.kill(os.getpid(), signum)  # have without ours
            return  # Ctrl-C: the main process decides
        if signum == signal.SIGINT:
            if hook.ctrl_c:  # a second Ctrl-C
                raise KeyboardInterrupt
            hook.ctrl_c = True
        wanted = _ASKS[signum]
        if wanted > hook.asked:
            hook.asked = wanted
            action = ('saving a checkpoint and stopping' if wanted == _SAVE_AND_STOP
                      else 'stopping')
            again = ' (Ctrl-C again: at once)' if wanted == _STOP else ''
            say(f'{_NAMES[wanted]}: {action} after this iteration{again}')
        elif signum == signal.SIGINT:  # after a SIGTERM: the stop is under way
            say('Ctrl-C: already stopping after this iteration (Ctrl-C again: at once)')

    signums = [signal.SIGTERM] + ([signal.SIGINT] if ctrl_c else [])
    former = {signum: signal.signal(signum, ask) for signum in signums}
    undo_workers = _workers_take_sigterm_from_the_main_process_only()

    def restore():
        undo_workers()
        for signum, handler in former.items():
            signal.signal(signum, handler)
        if hook in runner._hooks:  # a later runner.train() starts without a stop asked
            runner._hooks.remove(hook)
    return restore


def _sigterm_from_the_main_process_only():
    """In a data-loader worker: a SIGTERM sent by the main process (shutting the
    worker down, or at its exit) ends the worker at once and quietly, as torch's own
    handler does; one sent by anyone else (a scheduler signalling the whole job) is
    ignored. SIGTERM is blocked and taken by a thread that reads its sender; a
    process the worker forks gets it unblocked (one started by ``subprocess`` keeps it
    blocked: the mask survives exec)."""
    import threading
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.register_at_fork(after_in_child=lambda: signal.pthread_sigmask(
        signal.SIG_UNBLOCK, {signal.SIGTERM}))

    def wait():
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)
    threading.Thread(target=wait, name='sigterm', daemon=True).start()


def _workers_take_sigterm_from_the_main_process_only():
    """Make data-loader workers started from now on ignore a SIGTERM that the main
    process did not send (see the module's notes). torch installs its handlers at the
    start of each worker (``_set_worker_signal_handlers``, looked up when the worker
    starts): ours goes after them. Returns what undoes it."""
    try:
        from torch.utils.data._utils import signal_handling
        torch_handlers = signal_handling._set_worker_signal_handlers
    except (ImportError, AttributeError):  # another torch: workers as torch has them
        return lambda: None

    def set_worker_signal_handlers(*args, **kwargs):
        torch_handlers(*args, **kwargs)
        _sigterm_from_the_main_process_only()

    signal_handling._set_worker_signal_handlers = set_worker_signal_handlers

    def undo():
        signal_handling._set_worker_signal_handlers = torch_handlers
    return undo

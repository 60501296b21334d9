"""Crash-safe checkpoints (mmsora.engine.atomic_checkpoint): temporary file + rename,
keep the last N, a failed write never replaces or deletes a good one (a killed write:
tests/test_tools/test_kill_resume.py)."""
import contextlib
import errno
import functools
import os
import os.path as osp
import resource

import pytest
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop, Runner

from mmsora.engine import CheckpointWriteError
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.error_messages import explain_error
from tests.test_engine.test_scalars_full_disk import train_cli
from tests.tiny_models import tiny_cfg


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read()


def test_keeps_the_last_n_and_points_at_the_newest(repo_root, tmp_path):
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 5,
                                      'default_hooks.checkpoint.interval=1',
                                      'default_hooks.checkpoint.max_keep_ckpts=2'))
    runner.train()
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == [
        'iter_4.pth', 'iter_5.pth']
    assert last_checkpoint(tmp_path) == str(tmp_path / 'iter_5.pth')
    assert not [f for f in os.listdir(tmp_path) if '.tmp-' in f]
    assert load_checkpoint_file(tmp_path / 'iter_5.pth')['meta']['iter'] == 5


def test_a_save_leaves_the_temporary_files_of_running_writers(repo_root, tmp_path):
    """An export into the work dir of a run that trains on (``tools/export_denoiser.py
    RUN --out W/dit.pt``): the run's next save removed the export's temporary file, and
    the export failed at its rename. Those of killed processes the save removes."""
    from tests.test_engine.test_stale_tmp_folders import (ended_pid, export_folder,
                                                          temp_file, writing)
    killed = ended_pid()
    left = [export_folder(tmp_path, killed), temp_file(tmp_path, killed)]
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 1,
                                      'default_hooks.checkpoint.interval=1'))
    with writing(tmp_path / 'dit.pt') as tmp:
        runner.train()  # (saves iter_1.pth)
        assert osp.exists(tmp)
    assert last_checkpoint(tmp_path) == str(tmp_path / 'iter_1.pth')
    assert (tmp_path / 'dit.pt').exists()
    assert not [path for path in left if path.exists()]
    assert not [f for f in os.listdir(tmp_path) if '.tmp-' in f]


class _FileSizeLimit(Hook):
    """From iteration ``start``, files may not grow beyond ``limit`` bytes: the
    kernel then fails writes with EFBIG, as a full disk fails them with ENOSPC."""

    def __init__(self, start, limit):
        self.start, self.limit = start, limit
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.start:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))

    def restore(self):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)


def test_failed_write_keeps_the_previous_checkpoint(repo_root, tmp_path):
    # max_keep_ckpts=1: mmengine itself deletes iter_2.pth before writing iter_4.pth,
    # so a failed write would leave no checkpoint at all.
    cfg = tiny_cfg(repo_root, tmp_path, 6, 'default_hooks.checkpoint.interval=2',
                   'default_hooks.checkpoint.max_keep_ckpts=1')
    limit = _FileSizeLimit(start=3, limit=20_000)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(limit)
    try:
        with pytest.raises(CheckpointWriteError) as info:
            runner.train()
    finally:
        limit.restore()
    good = str(tmp_path / 'iter_2.pth')
    assert osp.getsize(good) > 20_000  # the limit really is below a checkpoint's size
    message = explain_error(info.value)  # what tools/train.py prints, on one line
    assert message == (f'cannot write checkpoint {tmp_path / "iter_4.pth"}: File too large; '
                       f'the previous checkpoint {good} is intact (--resume continues from it)')
    assert not [f for f in os.listdir(tmp_path) if '.tmp-' in f or f == 'iter_4.pth']
    assert last_checkpoint(tmp_path) == good
    assert load_checkpoint_file(good)['meta']['iter'] == 2
    # ... and --resume continues from it.
    resumed = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 3, resume='auto'))
    resumed.train()
    assert resumed.iter == 3


def test_failed_put_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / 'ckpt.pth'

    def disk_full(fd):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(OSError, match='No space left'):
        LocalBackend().put(b'x' * 1000, target)
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_streams_into_its_file(tmp_path):
    """mmengine's save_checkpoint serialises the whole checkpoint into memory before
    writing it; the mended one (what the runner, the hooks and the strategies call)
    writes torch.save's output straight into the temporary file: the Python heap
    (where BytesIO keeps its buffer) grows by a fraction of the checkpoint, not by
    the checkpoint. The file is complete and reads back."""
    import tracemalloc

    import mmengine.runner
    import mmengine.runner.checkpoint as mm_checkpoint
    import mmengine.runner.runner as mm_runner
    import torch

    from mmsora.engine.atomic_checkpoint import MMENGINE_SAVE_CHECKPOINT, save_checkpoint
    from mmsora.engine.strategies import mend_mmengine_deepspeed
    mend_mmengine_deepspeed()
    import mmengine._strategy.deepspeed as mm_deepspeed
    for module in (mm_checkpoint, mm_runner, mmengine.runner, mm_deepspeed):
        assert module.save_checkpoint is save_checkpoint, module
    torch.manual_seed(0)
    ckpt = {'state_dict': {f'w{i}': torch.randn(256, 1024) for i in range(16)},
            'meta': {'iter': 3}}  # 16 MiB of tensors
    size = 16 * 2**20
    for save, path in ((save_checkpoint, tmp_path / 'ours.pth'),
                       (MMENGINE_SAVE_CHECKPOINT, tmp_path / 'mmengine.pth')):
        tracemalloc.start()
        save(ckpt, str(path))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if save is save_checkpoint:
            assert peak < size / 8, peak
        else:  # the same measurement sees mmengine's copy
            assert peak > size, peak
        loaded = load_checkpoint_file(path)
        assert loaded['meta'] == {'iter': 3}
        for name, value in ckpt['state_dict'].items():
            assert torch.equal(loaded['state_dict'][name], value), name
    assert sorted(os.listdir(tmp_path)) == ['mmengine.pth', 'ours.pth']  # no temp files


# Through tools/train.py: a checkpoint's save that finds no room ends the run in the
# one line of a full disk (graceful_stop.stopped_by_full_disk); it was the checkpoint's
# error line, then 'training stopped by this error ...: continue with --resume' under
# it, which for a file-size limit (EFBIG) advised a --resume that fails there again.


@contextlib.contextmanager
def no_room_from(iteration, how):
    """Inside, from iteration ``iteration`` on, writes find no room: ``'ulimit'``, files
    may not grow beyond 200 kB (a checkpoint is larger; the log and scalars files are
    not): the kernel fails the write with EFBIG; ``errno``, each ``os.fsync`` fails with
    it (ENOSPC: where a full disk's last write fails on NFS, or with ext4's delayed
    allocation)."""
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    run_iter = IterBasedTrainLoop.run_iter
    with pytest.MonkeyPatch.context() as patch:
        def run_iter_then_fill(loop, data_batch):
            if loop.iter + 1 == iteration:
                if how == 'ulimit':
                    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, saved[1]))
                else:
                    patch.setattr(os, 'fsync', functools.partial(fail_fsync, how))
            run_iter(loop, data_batch)

        patch.setattr(IterBasedTrainLoop, 'run_iter', run_iter_then_fill)
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, saved)


def fail_fsync(error, fd):
    raise OSError(error, os.strerror(error))


EVERY_2 = ['default_hooks.checkpoint.interval=2']  # (6 iterations: train_cli's)
KEEP_1 = [*EVERY_2, 'default_hooks.checkpoint.max_keep_ckpts=1']
NO_ROOM = {  # how, the error, what to do
    'ulimit': ('File too large', 'raise the file-size limit (ulimit -f)'),
    errno.ENOSPC: ('No space left on device', 'free space there'),
}


@pytest.mark.parametrize('how', list(NO_ROOM))
@pytest.mark.usefixtures('kept_environ', 'malloc_calls')
def test_no_room_for_a_checkpoint_is_one_line(repo_root, tmp_path, capfd, runs, how):
    work = tmp_path / 'w'
    with no_room_from(3, how):
        assert train_cli(repo_root, work, *KEEP_1) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    strerror, fix = NO_ROOM[how]
    good = work / 'iter_2.pth'
    assert [line for line in err.splitlines() if line.startswith('error')] == [
        f'error: cannot write checkpoint {work}/iter_4.pth: {strerror} (no partial file '
        f'left); training stopped after iteration 4; the last checkpoint is {good} '
        f'(intact; iterations 3-4 are not in it): {fix}, then continue with --resume '
        f'(--work-dir {work})'], err[-3000:]
    assert err.strip().splitlines()[-1].startswith('error: cannot write checkpoint ')
    if how == 'ulimit':
        assert osp.getsize(good) > 200_000  # the limit really is below a checkpoint's size
    assert not [f for f in os.listdir(work) if '.tmp-' in f or f == 'iter_4.pth']
    assert last_checkpoint(work) == str(good)
    # as it says: with room again, --resume goes on from iteration 2 to the end
    runs()
    assert train_cli(repo_root, work, *KEEP_1, '--resume') == 0
    assert last_checkpoint(work) == str(work / 'iter_6.pth')
    assert load_checkpoint_file(work / 'iter_6.pth')['meta']['iter'] == 6


@pytest.mark.usefixtures('kept_environ', 'malloc_calls')
def test_no_room_before_any_checkpoint_says_none_was_saved(repo_root, tmp_path, capfd, runs):
    work = tmp_path / 'w'
    with no_room_from(1, errno.EDQUOT):
        assert train_cli(repo_root, work, *EVERY_2) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith('error')] == [
        f'error: cannot write checkpoint {work}/iter_2.pth: {os.strerror(errno.EDQUOT)} (no '
        'partial file left); training stopped after iteration 2; no checkpoint was saved '
        'yet: free space there, then run the same command again'], err[-3000:]


@pytest.mark.usefixtures('kept_environ', 'malloc_calls')
def test_other_checkpoint_write_errors_say_where_the_run_stands_under_theirs(
        repo_root, tmp_path, capfd, runs):
    """An I/O error (a failing disk) is not a full one: the checkpoint's line and the
    line of where the run stands under it, as before."""
    work = tmp_path / 'w'
    with no_room_from(3, errno.EIO):
        assert train_cli(repo_root, work, *EVERY_2) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-2:] == [
        f'error: cannot write checkpoint {work}/iter_4.pth: Input/output error; the previous '
        f'checkpoint {work}/iter_2.pth is intact (--resume continues from it)',
        f'training stopped by this error after iteration 4; the last checkpoint is '
        f'{work}/iter_2.pth (iterations 3-4 are not in it): continue with --resume '
        f'(--work-dir {work})'], err[-5:]


@pytest.mark.usefixtures('kept_environ', 'malloc_calls')
def test_no_room_for_the_last_checkpoint_file_names_it(repo_root, tmp_path, capfd, runs,
                                                       monkeypatch):
    """The pointer (``last_checkpoint``) written after a checkpoint: a failed write
    names no file, and the line said 'cannot write a file: ...: free space there'."""
    import mmsora.engine.atomic_checkpoint as atomic_checkpoint
    write = atomic_checkpoint.atomic_write_bytes

    def no_room_for_the_pointer(path, data, sync=True):
        if osp.basename(path) == 'last_checkpoint':  # (a failed write: no filename)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, data, sync)

    monkeypatch.setattr(atomic_checkpoint, 'atomic_write_bytes', no_room_for_the_pointer)
    work = tmp_path / 'w'
    assert train_cli(repo_root, work, *EVERY_2) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith('error')] == [
        f'error: cannot write {work}/last_checkpoint: {os.strerror(errno.ENOSPC)}; training '
        f'stopped after iteration 2; the last checkpoint is {work}/iter_2.pth: free space '
        f'there, then continue with --resume (--work-dir {work})'], err[-3000:]

"""Checkpoint writes that fail outside mmsora's own writer: DeepSpeed's files (torch.save
given a path, whose failed write is torch's RuntimeError with no errno), the
``last_checkpoint`` pointer after a checkpoint saved whole, and a temporary file that
cannot be opened. Each ends in one line that names the file and says what to do."""
import errno
import os
import os.path as osp
import resource

import pytest
import torch
from mmengine.fileio.backends import LocalBackend
from mmengine.runner import Runner

import mmsora.utils.atomic_io as atomic_io
from mmsora.engine.atomic_checkpoint import CheckpointWriteError
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.error_messages import explain_error
from tests.cli_helpers import report_file_size_limit
from tests.test_engine.test_atomic_checkpoint import EVERY_2, last_checkpoint
from tests.test_engine.test_scalars_full_disk import train_cli
from tests.tiny_models import tiny_cfg

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')


def deepspeed_save(self, out_dir, filename, *args, **kwargs):
    """``Runner.save_checkpoint`` as DeepSpeed writes one: a folder, its files written
    by ``torch.save`` given their path (TorchCheckpointEngine.save)."""
    folder = osp.join(out_dir, filename)
    os.makedirs(folder, exist_ok=True)
    state = dict(module=self.model.state_dict(), optimizer=self.optim_wrapper.state_dict())
    torch.save(state, osp.join(folder, 'mp_rank_00_model_states.pt'))


@pytest.mark.parametrize('limit', [200_000, 20_000])
def test_a_deepspeed_write_at_the_file_size_limit_is_one_line(
        repo_root, tmp_path, capfd, runs, monkeypatch, limit):
    """torch.save into a path at the file-size limit raises RuntimeError ('unexpected
    pos' over 'iostream error'), which was a traceback, with a partial iter_4.pth
    folder left. (Under 64 kB the limit fails the check's own small write too.)"""
    monkeypatch.setattr(Runner, 'save_checkpoint', deepspeed_save)
    work = tmp_path / 'w'
    with _limit(limit):
        assert train_cli(repo_root, work, *EVERY_2) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    good = work / 'iter_2.pth'
    assert [line for line in err.splitlines() if line.startswith('error')] == [
        f'error: cannot write checkpoint {work}/iter_4.pth: File too large (no partial '
        f'file left); training stopped after iteration 4; the last checkpoint is {good} '
        '(intact; iterations 3-4 are not in it): raise the file-size limit (ulimit -f), '
        f'then continue with --resume (--work-dir {work})'], err[-3000:]
    assert osp.getsize(good / 'mp_rank_00_model_states.pt') > 200_000  # (over the limit)
    assert not osp.exists(work / 'iter_4.pth')  # the partial folder is removed
    assert not [f for f in os.listdir(work) if '.tmp-' in f]
    assert last_checkpoint(work) == str(good)


class _limit:
    """From iteration 3, files may not grow beyond ``limit`` bytes."""

    def __init__(self, limit):
        self.limit = limit

    def __enter__(self):
        from mmengine.runner import IterBasedTrainLoop
        self.patch = pytest.MonkeyPatch()
        self.saved = resource.getrlimit(resource.RLIMIT_FSIZE)
        run_iter = IterBasedTrainLoop.run_iter

        def run_iter_then_limit(loop, data_batch):
            if loop.iter + 1 == 3:
                resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.saved[1]))
            run_iter(loop, data_batch)
        self.patch.setattr(IterBasedTrainLoop, 'run_iter', run_iter_then_limit)

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.saved)
        self.patch.undo()


def test_a_partial_folder_other_processes_write_is_left_and_said(repo_root, tmp_path,
                                                                 monkeypatch):
    """Under several processes the others may still write into the folder: it is left,
    and the error says so."""
    import mmsora.engine.atomic_checkpoint as atomic_checkpoint
    monkeypatch.setattr(Runner, 'save_checkpoint', deepspeed_save)
    monkeypatch.setattr(atomic_checkpoint, 'get_world_size', lambda: 2)
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 4,
                                      'default_hooks.checkpoint.interval=2'))
    with _limit(200_000), pytest.raises(CheckpointWriteError) as info:
        runner.train()
    left = str(tmp_path / 'iter_4.pth')
    assert info.value.left == left and osp.isdir(left)
    assert explain_error(info.value) == (
        f'cannot write checkpoint {left}: File too large; its partial {left} is left '
        f'(remove it); the previous checkpoint {tmp_path / "iter_2.pth"} is intact '
        '(--resume continues from it)')


def _failed_deepspeed_write(repo_root, tmp_path, monkeypatch, room):
    """A DeepSpeed-like save at iteration 4 whose torch.save fails when its file reaches
    200 kB, under a file-size limit reported as 100 GB, on a disk said to have ``room``
    bytes left (None: the real disk's); returns the CheckpointWriteError."""
    import shutil
    from types import SimpleNamespace
    monkeypatch.setattr(Runner, 'save_checkpoint', deepspeed_save)
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 4,
                                      'default_hooks.checkpoint.interval=2'))
    if room is not None:
        usage = shutil.disk_usage
        monkeypatch.setattr(shutil, 'disk_usage', lambda path: SimpleNamespace(
            total=usage(path).total, free=room) if str(tmp_path) in str(path) else usage(path))
    with _limit(200_000), pytest.raises(CheckpointWriteError) as info:
        report_file_size_limit(monkeypatch, 100 << 30)  # (inside: _limit saves and restores the real one)
        runner.train()
    return info.value


def test_a_limit_far_above_the_files_is_not_named_on_a_full_disk(repo_root, tmp_path,
                                                                 monkeypatch):
    """ulimit -f at 100 GB, a disk with less room left than the failed write took: the
    line advised raising the file-size limit, which was never reached."""
    error = _failed_deepspeed_write(repo_root, tmp_path, monkeypatch, room=100_000)
    assert error.error.errno == errno.ENOSPC
    good = tmp_path / 'iter_2.pth'
    assert explain_error(error) == (
        f'cannot write checkpoint {tmp_path / "iter_4.pth"}: No space left on device; the '
        f'previous checkpoint {good} is intact (--resume continues from it)')
    assert not osp.exists(tmp_path / 'iter_4.pth')


def test_a_limit_far_above_the_files_on_a_disk_with_room_is_not_named(repo_root, tmp_path,
                                                                      monkeypatch):
    """Neither the limit nor the disk's room explains the failure: torch's words."""
    error = _failed_deepspeed_write(repo_root, tmp_path, monkeypatch, room=None)
    assert error.error.errno is None
    assert explain_error(error).startswith(
        f'cannot write checkpoint {tmp_path / "iter_4.pth"}: torch could not write it ('), \
        explain_error(error)


def test_a_failure_on_a_disk_with_room_left_is_not_a_full_disk(tmp_path, monkeypatch):
    """A write that failed otherwise (EIO on a network disk) after taking more than the
    room it left (a 4 TB file in apparent size, sparse: no blocks; 1 GB left) was named
    a full disk (review aq): the room left and the blocks taken judge it now."""
    import shutil
    from types import SimpleNamespace

    from mmsora.engine.atomic_checkpoint import _write_error
    folder = tmp_path / 'iter_4.pth'
    folder.mkdir()
    with open(folder / 'mp_rank_00_model_states.pt', 'wb') as f:
        f.truncate(4 << 40)  # (sparse)
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: SimpleNamespace(free=1 << 30))
    error = _write_error(str(folder), RuntimeError('unexpected pos 123 vs 456'))
    assert error.errno is None and str(error) == (
        'torch could not write it (unexpected pos 123 vs 456)')
    with open(folder / 'real.pt', 'wb') as f:  # blocks taken, and next to no room left
        f.write(bytes(1 << 20))
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: SimpleNamespace(free=4096))
    assert _write_error(str(folder), RuntimeError('x')).errno == errno.ENOSPC


def test_other_runtime_errors_of_a_save_are_not_taken_for_a_write(repo_root, tmp_path,
                                                                  monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError('CUDA error: an illegal memory access was encountered')

    monkeypatch.setattr(Runner, 'save_checkpoint', broken)
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 2,
                                      'default_hooks.checkpoint.interval=2'))
    with pytest.raises(RuntimeError, match='illegal memory access') as info:
        runner.train()
    assert not isinstance(info.value, CheckpointWriteError)


def test_a_second_ctrl_c_inside_deepspeeds_save_stays_the_interrupt(repo_root, tmp_path,
                                                                     monkeypatch):
    """torch's zip writer, closing the archive, raises 'unexpected pos' over a
    KeyboardInterrupt that broke off its write: that is no failed write of the disk."""
    def interrupted(self, out_dir, filename, *args, **kwargs):
        os.makedirs(osp.join(out_dir, filename))
        try:
            raise KeyboardInterrupt
        finally:  # (as torch's writer's __exit__ does)
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos')

    monkeypatch.setattr(Runner, 'save_checkpoint', interrupted)
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 2,
                                      'default_hooks.checkpoint.interval=2'))
    with pytest.raises(KeyboardInterrupt):
        runner.train()


def test_no_room_for_the_pointer_names_the_whole_checkpoint(repo_root, tmp_path, capfd,
                                                            runs, monkeypatch):
    """iter_4.pth saved whole, then last_checkpoint's write met ENOSPC: the line said
    'the last checkpoint is iter_2.pth (iterations 3-4 are not in it)', and a plain
    --resume (the pointer's) would have gone back to iteration 2."""
    import mmsora.engine.atomic_checkpoint as atomic_checkpoint
    write, pointers = atomic_checkpoint.atomic_write_bytes, []

    def no_room_for_the_second_pointer(path, data, sync=True):
        if osp.basename(path) == 'last_checkpoint':
            pointers.append(data)
            if len(pointers) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, data, sync)

    monkeypatch.setattr(atomic_checkpoint, 'atomic_write_bytes',
                        no_room_for_the_second_pointer)
    work = tmp_path / 'w'
    assert train_cli(repo_root, work, *EVERY_2) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    whole = work / 'iter_4.pth'
    assert [line for line in err.splitlines() if line.startswith('error')] == [
        f'error: cannot write {work}/last_checkpoint: {os.strerror(errno.ENOSPC)}; training '
        f'stopped after iteration 4; the last checkpoint is {whole} (saved whole; '
        f'{work}/last_checkpoint could not be updated and names {work}/iter_2.pth): free '
        f'space there, then continue with --resume {whole} (--work-dir {work})'], err[-3000:]
    assert load_checkpoint_file(whole)['meta']['iter'] == 4
    # as it says: with room again, --resume iter_4.pth goes on to the end
    monkeypatch.setattr(atomic_checkpoint, 'atomic_write_bytes', write)
    runs()
    assert train_cli(repo_root, work, *EVERY_2, '--resume', str(whole)) == 0
    assert last_checkpoint(work) == str(work / 'iter_6.pth')
    assert load_checkpoint_file(work / 'iter_6.pth')['meta']['iter'] == 6


def test_a_temporary_file_that_cannot_be_opened_names_the_target(tmp_path, monkeypatch):
    """A read-only file system (or no inode left) fails the temporary file's open: the
    error named the hidden temporary file, not the file being written."""
    real_open = open

    def read_only(path, *args, **kwargs):
        if '.tmp-' in osp.basename(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(atomic_io, 'open', read_only, raising=False)
    target = tmp_path / 'iter_4.pth'
    with pytest.raises(OSError) as info:
        LocalBackend().put(b'x', target)  # (mmengine's writer, made atomic)
    assert info.value.errno == errno.EROFS and info.value.filename == str(target)
    assert os.listdir(tmp_path) == []


def test_a_real_deepspeed_save_at_the_file_size_limit_is_one_line(tmp_path):
    """tools/train.py --deepspeed (ZeRO-2, one process on CPU) under ``ulimit -f`` below
    its checkpoint's files: DeepSpeed's TorchCheckpointEngine's failed torch.save was a
    traceback ending in 'unexpected pos', and its partial iter_2.pth folder was left."""
    pytest.importorskip('deepspeed')
    import subprocess
    import sys

    from tests.launch import RUN, fresh_run_env
    from tests.tiny_models import DEMO
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    work = tmp_path / 'w'
    cmd = [sys.executable, '-c', RUN, osp.join(root, 'tools/train.py'), osp.join(root, DEMO),
           '--deepspeed', 'deepspeed_zero2', '--work-dir', str(work), '--cfg-options',
           'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2',
           'train_dataloader.num_workers=0', 'train_dataloader.batch_size=4',
           'model.denoiser.depth=1']

    def limit_file_size():  # (in the child only; its logs are smaller)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))

    proc = subprocess.run(cmd, env=fresh_run_env(PYTHONPATH=root), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f'error: cannot write checkpoint {work}/iter_2.pth: File too large (no partial file '
        'left); training stopped after iteration 2; no checkpoint was saved yet: raise the '
        'file-size limit (ulimit -f), then run the same command again'), proc.stderr[-3000:]
    assert not osp.exists(work / 'iter_2.pth')
    assert not [f for f in os.listdir(work) if '.tmp-' in f]

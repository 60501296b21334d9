"""Crash-safe checkpoints (mmsora.engine.atomic_checkpoint): temporary file + rename,
keep the last N, a failed write never replaces or deletes a good one (a killed write:
tests/test_tools/test_kill_resume.py)."""
import os
import os.path as osp
import resource

import pytest
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmsora.engine import CheckpointWriteError
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.cli import explain_error
from tests.test_engine.test_train import tiny_cfg


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

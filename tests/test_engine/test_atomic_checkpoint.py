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
from mmsora.utils.error_messages import explain_error
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

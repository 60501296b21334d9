"""Stops that come while an iteration's hooks run (walk-through of Ctrl-C / SIGTERM):
a second Ctrl-C inside a checkpoint's save ended the run with a 47-line traceback
(torch's zip writer raised 'unexpected pos' over the KeyboardInterrupt) and exit
code 1; the stop line counted one iteration too few when the stop came in the hooks
of an iteration whose train step had finished; a Ctrl-C's line did not say which
iterations the checkpoint lacks; and tools/dist_train.sh returned at a SIGTERM before
torchrun's processes had saved."""
import os
import signal
import subprocess

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmsora.engine.graceful_stop import interrupted_at, stop_gracefully, stopped_by_error
from tests.runner_probes import signalled_train
from tests.tiny_models import tiny_cfg


class _CtrlCTwice(Hook):
    """At iteration ``at`` (1-based), before the checkpoint hook saves it: Ctrl-C, and
    a second Ctrl-C at the third write of the checkpoint's file (inside torch.save,
    whose writer calls the file's ``write``), as a user pressing it twice does."""

    priority = 'NORMAL'  # after GracefulStopHook, before CheckpointHook (VERY_LOW)

    def __init__(self, at, monkeypatch):
        self.at, self.monkeypatch = at, monkeypatch

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 != self.at:
            return
        os.kill(os.getpid(), signal.SIGINT)
        real_save = torch.save
        self.monkeypatch.setattr(torch, 'save', lambda obj, f, *args, **kwargs: real_save(
            obj, _CtrlCAtWrite(f, 3), *args, **kwargs))


class _CtrlCAtWrite:
    """A file whose ``n``-th ``write`` gets a Ctrl-C (SIGINT to this process)."""

    def __init__(self, f, n):
        self.f, self.n = f, n

    def write(self, data):
        self.n -= 1
        if self.n == 0:
            os.kill(os.getpid(), signal.SIGINT)  # (its handler raises right here)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def _train(runner):
    """``runner.train()`` as tools/train.py runs it: the line a Ctrl-C ends with
    (a KeyboardInterrupt that is no Interrupted of the hook's own), else the error."""
    restore = stop_gracefully(runner)
    try:
        runner.train()
    except KeyboardInterrupt as e:
        assert type(e) is KeyboardInterrupt, e  # (not the hook's stop)
        return interrupted_at(runner, runner._train_loop.iter)
    finally:
        restore()
    raise AssertionError('the run was not stopped')


def test_a_second_ctrl_c_during_a_save_is_the_interrupt(repo_root, tmp_path, monkeypatch):
    """The save is broken off, the earlier checkpoint kept, and the line says where
    the run stands: iteration 4's train step finished (runner.iter still said 3)."""
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 10,
                                      'default_hooks.checkpoint.interval=2'))
    runner.register_hook(_CtrlCTwice(4, monkeypatch))
    line = _train(runner)
    assert line == (f'after iteration 4; the last checkpoint is {tmp_path}/iter_2.pth '
                    '(iterations 3-4 are not in it; SIGTERM saves the iteration it stops '
                    f'at): continue with --resume (--work-dir {tmp_path})')
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    assert sorted(p.name for p in tmp_path.iterdir() if '.pth' in p.name) == ['iter_2.pth']


class _FailAt(Hook):
    """An error in the hooks of iteration ``at`` (1-based), after its train step."""

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise RuntimeError('[gloo] Connection reset by peer')


def test_an_error_in_an_iterations_hooks_counts_the_iteration(repo_root, tmp_path):
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 10,
                                      'default_hooks.checkpoint.interval=2'))
    runner.register_hook(_FailAt(5))
    restore = stop_gracefully(runner)
    try:
        with pytest.raises(RuntimeError, match='Connection reset'):
            runner.train()
        line = stopped_by_error(runner)
    finally:
        restore()
    assert line == (f'training stopped by this error after iteration 5; the last '
                    f'checkpoint is {tmp_path}/iter_4.pth (iteration 5 is not in it): '
                    f'continue with --resume (--work-dir {tmp_path})')


def test_ctrl_c_names_the_iterations_not_saved(repo_root, tmp_path):
    """The first Ctrl-C stops after the iteration (3), whose checkpoint was not due."""
    _, stopped = signalled_train(repo_root, tmp_path, 10, 3, signal.SIGINT,
                                 'default_hooks.checkpoint.interval=2')
    assert str(stopped) == (
        f'after iteration 3; the last checkpoint is {tmp_path}/iter_2.pth (iteration 3 '
        'is not in it; SIGTERM saves the iteration it stops at): continue with --resume '
        f'(--work-dir {tmp_path})')


def test_dist_train_becomes_torchrun(repo_root, tmp_path):
    """The script execs torchrun: a SIGTERM to the script's process (or group) and a
    wait on it reach torchrun, which returns once its processes have saved. A fake
    PYTHON records the process it runs in."""
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\necho "$$ $*" > "$(dirname "$0")/ran.txt"\n')
    fake.chmod(0o755)
    env = {**os.environ, 'PYTHON': str(fake)}
    proc = subprocess.Popen(['bash', os.path.join(repo_root, 'tools', 'dist_train.sh'),
                             'c.py', '2', '--resume'], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    pid, args = (tmp_path / 'ran.txt').read_text().split(' ', 1)
    assert int(pid) == proc.pid
    assert args.startswith('-m torch.distributed.run --nnodes=1 ')
    assert args.rstrip().endswith(' c.py --launcher pytorch --resume')

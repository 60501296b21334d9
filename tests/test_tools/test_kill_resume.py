"""kill -9 of a training process, then --resume: the run ends exactly as an
uninterrupted one (losses of every iteration, weights, EMA, optimizer state), with
data-loader workers. Killed at a random iteration off the checkpoint boundaries, and
in the middle of writing a checkpoint."""
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from mmengine.runner import Runner

import mmsora.engine  # noqa: F401
from mmsora.utils.checkpoint import load_checkpoint_file
from tools.train import build_train_config, parse_args

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
ITERS, EVERY = 12, 4
OPTIONS = [
    'model.denoiser.hidden_size=32', 'model.denoiser.depth=2', 'model.denoiser.num_heads=2',
    'model.denoiser.input_size=8', 'model.latent_shape=[3,8,8]',
    'train_dataloader.dataset.size=8', 'train_dataloader.dataset.num_samples=40',
    'train_dataloader.batch_size=8', 'train_dataloader.num_workers=2',
    'param_scheduler=[]', 'default_hooks.logger.interval=1',
    f'train_cfg.max_iters={ITERS}', f'default_hooks.checkpoint.interval={EVERY}',
]

# Runs tools/train.py's config under a hook that stops the process at a chosen point
# and waits there to be killed: after the optimizer step of iteration N, before its
# EMA update ('iter'), or while the checkpoint of iteration N is being written,
# after its bytes and before the rename ('write').
_VICTIM = """
import os, sys, time
from mmengine.hooks import Hook
from mmengine.runner import Runner
from tools.train import build_train_config, parse_args

mode, at = sys.argv[1], int(sys.argv[2])
fsync = os.fsync

def wait_here(where):
    print(f'waiting {where}', flush=True)
    time.sleep(600)

class StopAt(Hook):
    priority = 'HIGHEST'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if mode == 'iter' and runner.iter + 1 == at:
            wait_here(f'after the step of iteration {at}')

    def before_save_checkpoint(self, runner, checkpoint):
        if mode == 'write' and runner.iter + 1 == at:
            os.fsync = lambda fd: wait_here(f'writing the checkpoint of iteration {at}')

runner = Runner.from_cfg(build_train_config(parse_args(sys.argv[3:])))
runner.register_hook(StopAt())
runner.train()
"""


def train_argv(work_dir, *extra):
    return [DEMO, '--work-dir', str(work_dir), *extra, '--cfg-options', *OPTIONS]


def kill_at(repo_root, work_dir, mode, at):
    """Start training in a subprocess, SIGKILL it at the chosen point."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': repo_root}
    proc = subprocess.Popen([sys.executable, '-c', _VICTIM, mode, str(at),
                             *train_argv(work_dir)], cwd=repo_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('waiting'):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, ''.join(lines[-40:])
    return ''.join(lines)


def final_state(path):
    ckpt = load_checkpoint_file(path)
    losses = list(ckpt['message_hub']['log_scalars']['train/loss'].data[0])
    return ckpt, losses


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    work = tmp_path_factory.mktemp('full')
    Runner.from_cfg(build_train_config(parse_args(train_argv(work)))).train()
    return final_state(work / f'iter_{ITERS}.pth')


def resume_and_compare(repo_root, work, reference):
    runner = Runner.from_cfg(build_train_config(parse_args(train_argv(work, '--resume'))))
    runner.train()
    ref, ref_losses = reference
    got, losses = final_state(work / f'iter_{ITERS}.pth')
    assert len(losses) == ITERS and losses == ref_losses
    for part in ('state_dict', 'ema_state_dict'):  # EMA weights and raw weights
        assert got[part].keys() == ref[part].keys()
        for key, value in ref[part].items():
            assert torch.equal(got[part][key], value), (part, key)
    for pid, state in ref['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(got['optimizer']['state'][pid][name], value), (pid, name)


def test_kill_at_a_random_iteration_then_resume(repo_root, tmp_path, uninterrupted):
    at = random.choice([i for i in range(EVERY + 1, ITERS) if i % EVERY])
    print(f'killed at iteration {at}')  # shown with a failure: rerun at that point
    log = kill_at(repo_root, tmp_path, 'iter', at)
    assert f'waiting after the step of iteration {at}' in log
    last = EVERY * (at // EVERY)
    with open(tmp_path / 'last_checkpoint') as f:
        assert f.read() == str(tmp_path / f'iter_{last}.pth'), at
    resume_and_compare(repo_root, tmp_path, uninterrupted)


def test_kill_while_writing_a_checkpoint_then_resume(repo_root, tmp_path, uninterrupted):
    kill_at(repo_root, tmp_path, 'write', 2 * EVERY)
    # The checkpoint being written never appears under its name; the one before is
    # still the latest, and --resume continues from it.
    assert not (tmp_path / f'iter_{2 * EVERY}.pth').exists()
    assert [f for f in os.listdir(tmp_path) if '.tmp-' in f]
    with open(tmp_path / 'last_checkpoint') as f:
        assert f.read() == str(tmp_path / f'iter_{EVERY}.pth')
    resume_and_compare(repo_root, tmp_path, uninterrupted)
    assert not [f for f in os.listdir(tmp_path) if '.tmp-' in f]  # cleaned at the next save

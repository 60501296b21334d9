"""The same config on 1 and 2 processes (gloo): ``global_batch_size`` gives the same
global batch, ``model.train_noise_seed`` the same per-sample draws, and the logged
loss is the global batch's, so both runs log the same losses and end with the same
weights."""
import glob
import json
import sys

import pytest
import torch
from mmengine.config import Config

from mmsora.engine.strategies import apply_global_batch, launcher_world_size
from mmsora.utils.cli import UserError
from tests.launch import free_port, run_tool
from tests.tiny_models import TINY_DEMO_OPTIONS

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
TINY = [*TINY_DEMO_OPTIONS, 'default_hooks.checkpoint.interval=3']



def losses_and_weights(work):
    scalars = glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))
    assert len(scalars) == 1, scalars
    with open(scalars[0]) as f:
        rows = [json.loads(line) for line in f]
    losses = {row['step']: row['loss'] for row in rows if 'loss' in row}
    ckpt = torch.load(work / 'iter_3.pth', map_location='cpu', weights_only=False)
    return losses, ckpt['state_dict'], ckpt['ema_state_dict']


def train_both(repo_root, tmp_path, options):
    one, two = tmp_path / 'one', tmp_path / 'two'
    result = run_tool([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(one),
                       '--cfg-options', *TINY, *options], repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'train_dataloader.batch_size=8 on each of 1 process' in result.stdout
    result = run_tool(['bash', 'tools/dist_train.sh', DEMO, '2', '--work-dir', str(two),
                       '--cfg-options', *TINY, *options], repo_root, PORT=str(free_port()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count('train_dataloader.batch_size=4 on each of 2 process') == 1
    # The dumped config of each run holds its per-process batch.
    assert Config.fromfile(one / 'dit_tiny2_1xb32_1500_shapes16.py').train_dataloader.batch_size == 8
    assert Config.fromfile(two / 'dit_tiny2_1xb32_1500_shapes16.py').train_dataloader.batch_size == 4
    return losses_and_weights(one), losses_and_weights(two)


def test_one_and_two_processes_train_alike(repo_root, tmp_path):
    (loss1, w1, ema1), (loss2, w2, ema2) = train_both(
        repo_root, tmp_path, ['model.train_noise_seed=0'])
    assert sorted(loss1) == sorted(loss2) == [1, 2, 3]
    for step in loss1:  # logged to 4 decimals by mmengine
        assert loss2[step] == pytest.approx(loss1[step], rel=2e-4, abs=2e-4), (loss1, loss2)
    for first, second in ((w1, w2), (ema1, ema2)):
        assert first.keys() == second.keys()
        for name in first:
            torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-5,
                                       msg=name)


def test_accumulation_on_one_process_trains_like_two_processes(repo_root, tmp_path):
    """global_batch_size=8 on one process with 2 micro-batches of 4 per step, and on
    two processes with 4 each: train_noise_seed keys each sample's draws by the
    optimizer step and its place in the step's global batch, so after 3 steps (6
    iterations on one process, 3 on two) both end with the same weights and EMA.
    Keyed by the iteration instead (the hub without 'accumulative_counts'), the
    second micro-batch of a step would draw as the next step's first does."""
    one, two = tmp_path / 'one', tmp_path / 'two'
    seeded = [*TINY_DEMO_OPTIONS, 'model.train_noise_seed=0']
    result = run_tool([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(one),
                       '--cfg-options', *seeded, 'optim_wrapper.accumulative_counts=2',
                       'train_cfg.max_iters=6', 'default_hooks.checkpoint.interval=6'],
                      repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'train_dataloader.batch_size=4 on each of 1 process' in result.stdout
    result = run_tool(['bash', 'tools/dist_train.sh', DEMO, '2', '--work-dir', str(two),
                       '--cfg-options', *seeded, 'default_hooks.checkpoint.interval=3'],
                      repo_root, PORT=str(free_port()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    a = torch.load(one / 'iter_6.pth', map_location='cpu', weights_only=False)
    b = torch.load(two / 'iter_3.pth', map_location='cpu', weights_only=False)
    assert int(a['ema_state_dict']['steps']) == int(b['ema_state_dict']['steps']) == 3
    for key in ('state_dict', 'ema_state_dict'):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=1e-4, atol=1e-5,
                                       msg=f'{key} {name}')


def test_without_the_noise_seed_the_runs_differ(repo_root, tmp_path):
    """The negative control: per-process draws (the default) depend on the split."""
    (loss1, w1, _), (loss2, w2, _) = train_both(repo_root, tmp_path, [])
    assert any(abs(loss2[s] - loss1[s]) > 1e-3 for s in loss1), (loss1, loss2)


def test_global_batch_splits_over_processes_and_accumulation():
    cfg = Config(dict(global_batch_size=256, train_dataloader=dict(batch_size=32),
                      optim_wrapper=dict(type='OptimWrapper')))
    assert apply_global_batch(cfg, 8) == 32
    assert apply_global_batch(cfg, 1) == 256
    cfg.optim_wrapper.accumulative_counts = 4
    assert apply_global_batch(cfg, 2) == 32
    with pytest.raises(UserError, match='split evenly over 3 process'):
        apply_global_batch(cfg, 3)
    cfg.global_batch_size = 0
    with pytest.raises(UserError, match='global_batch_size=0'):
        apply_global_batch(cfg, 1)
    plain = Config(dict(train_dataloader=dict(batch_size=32), optim_wrapper=dict()))
    assert apply_global_batch(plain, 8) is None and plain.train_dataloader.batch_size == 32


def test_world_size_comes_from_the_launcher(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '16')
    monkeypatch.setenv('SLURM_NTASKS', '32')
    assert launcher_world_size('pytorch') == 16
    assert launcher_world_size('slurm') == 32
    assert launcher_world_size('none') == 1

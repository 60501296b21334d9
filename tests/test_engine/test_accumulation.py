"""Gradient accumulation (optim_wrapper.accumulative_counts = k) through mmengine's
Runner on the tiny demo model. mmsora's EMAHook (mmsora/engine/ema.py) moves the
average once per optimizer step: at the k-th micro-batch (and at the last iteration),
not k times per step as mmengine's hook does; without accumulation it is mmengine's
hook, update for update. Checkpoints fall on step boundaries (tools/train.py refuses
an interval inside a step), a resume continues exactly, and one with another k is
refused. DeepSpeed's accumulation runs in tests/test_engine/test_deepspeed_train.py."""
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmsora.engine import EMAHook, ShardedEMAHook, accumulation_steps, optimizer_stepped
from mmsora.registry import HOOKS
from mmsora.utils.cli import UserError
from tests.tiny_models import TINY_DEMO_OPTIONS
from tools.train import build_train_config, parse_args

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
MOMENTUM = 0.3  # large, so that one update more or less shows


class RecordWeights(Hook):
    """The model's state after every iteration (after the EMA hook's update)."""
    priority = 'LOWEST'

    def __init__(self):
        self.states = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.states.append({k: v.detach().clone()
                            for k, v in runner.model.state_dict().items()})


def train(repo_root, work_dir, ema_type, accumulate, iters, *options, resume=None):
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(work_dir), '--cfg-options',
            *TINY_DEMO_OPTIONS, f'train_cfg.max_iters={iters}',
            f'optim_wrapper.accumulative_counts={accumulate}',
            'default_hooks.checkpoint.interval=100', *options]
    if resume:
        argv += ['--resume', resume]
    cfg = build_train_config(parse_args(argv))
    cfg.custom_hooks = [dict(type=ema_type, momentum=MOMENTUM, update_buffers=True,
                             priority='ABOVE_NORMAL'), dict(type='RNGStateHook')]
    cfg.experiment_name = f'{ema_type}-{accumulate}-{iters}-{osp.basename(work_dir)}'
    runner = Runner.from_cfg(cfg)
    record = RecordWeights()
    runner.register_hook(record)
    runner.train()
    ema = next(h for h in runner.hooks if hasattr(h, 'ema_model')).ema_model
    return ema, record.states, runner


def average_of(states):
    """mmengine's rule over ``states``: the first copies, each next one lerps."""
    average = {k: v.clone() for k, v in states[0].items()}
    for state in states[1:]:
        for key, value in average.items():
            if value.dtype.is_floating_point:
                value.lerp_(state[key], MOMENTUM)
    return average


def assert_average(ema, expected):
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, expected[key].to(value.dtype)), key


@pytest.mark.parametrize('ema_type', ['EMAHook', 'FP32EMAHook'])
def test_the_average_moves_once_per_optimizer_step(repo_root, tmp_path, ema_type):
    # 5 micro-batches, 2 per step: the optimizer steps after the 2nd, 4th and 5th
    # (mmengine steps at the last iteration whatever its count).
    ema, states, runner = train(repo_root, tmp_path, ema_type, accumulate=2, iters=5)
    assert type(runner.optim_wrapper).__name__ == 'OptimWrapper'
    weight = 'denoiser.final_layer.linear.weight'
    moved = [not torch.equal(a[weight], b[weight]) for a, b in zip(states, states[1:])]
    assert moved == [True, False, True, True]  # after iterations 2, (not 3), 4, 5
    assert ema.steps == 3
    assert_average(ema, average_of([states[1], states[3], states[4]]))


def test_mmengines_hook_moves_at_every_micro_batch(repo_root, tmp_path):
    """What the default replaces: mmengine's own hook, still there by its scoped name,
    averages the unchanged weights again at every micro-batch."""
    ema, states, _ = train(repo_root, tmp_path, 'mmengine.EMAHook', accumulate=2, iters=5)
    assert ema.steps == 5
    assert_average(ema, average_of(states))
    ours = average_of([states[1], states[3], states[4]])
    assert any(not torch.equal(v, ours[k]) for k, v in ema.module.state_dict().items()
               if v.dtype.is_floating_point)


def test_without_accumulation_it_is_mmengines_hook(repo_root, tmp_path):
    ours, states, _ = train(repo_root, tmp_path / 'ours', 'EMAHook', accumulate=1, iters=3)
    theirs, _, _ = train(repo_root, tmp_path / 'theirs', 'mmengine.EMAHook',
                            accumulate=1, iters=3)
    assert ours.steps == theirs.steps == 3
    for key, value in ours.module.state_dict().items():
        assert torch.equal(value, theirs.module.state_dict()[key]), key
    assert_average(ours, average_of(states))


def test_the_configs_emahook_is_mmsoras():
    assert HOOKS.get('EMAHook') is EMAHook
    assert HOOKS.get('mmengine.EMAHook') is EMAHook.__mro__[1]
    assert issubclass(ShardedEMAHook, EMAHook)


class Wrapper:
    """What optimizer_stepped reads of mmengine's OptimWrapper."""
    _inner_count, _accumulative_counts = 1, 2

    def __init__(self, stepped):
        self.stepped = stepped

    def should_update(self):
        return self.stepped


class Engine:
    """What optimizer_stepped reads of DeepSpeed's engine after its step()."""

    def __init__(self, micro_steps, accumulation, managed=True):
        self.micro_steps, self._accumulation = micro_steps, accumulation
        self._managed = managed

    def gradient_accumulation_steps(self):
        return self._accumulation

    def managed_gradient_accumulation(self):
        return self._managed


class DeepSpeedWrapper:
    def __init__(self, engine):
        self._model = engine


class Runner_:
    def __init__(self, optim_wrapper=None):
        if optim_wrapper is not None:
            self.optim_wrapper = optim_wrapper


def test_optimizer_stepped_reads_each_wrapper():
    assert optimizer_stepped(Runner_(Wrapper(True)))
    assert not optimizer_stepped(Runner_(Wrapper(False)))
    # DeepSpeed counts the micro-batch after stepping: 2 of 4 -> not yet, 4 of 4 -> did.
    assert not optimizer_stepped(Runner_(DeepSpeedWrapper(Engine(2, 4))))
    assert optimizer_stepped(Runner_(DeepSpeedWrapper(Engine(4, 4))))
    assert optimizer_stepped(Runner_(DeepSpeedWrapper(Engine(5, 1))))
    # managed_gradient_accumulation: false -- every step() steps
    unmanaged = Runner_(DeepSpeedWrapper(Engine(2, 4, managed=False)))
    assert optimizer_stepped(unmanaged) and accumulation_steps(unmanaged) == 1
    assert accumulation_steps(Runner_(DeepSpeedWrapper(Engine(2, 4)))) == 4
    # Several optimizers (OptimWrapperDict inherits should_update, not its count)
    from mmengine.optim import OptimWrapper, OptimWrapperDict
    several = OptimWrapperDict(a=OptimWrapper(torch.optim.SGD(
        torch.nn.Linear(2, 2).parameters(), lr=0.1), accumulative_counts=2))
    assert optimizer_stepped(Runner_(several)) and accumulation_steps(Runner_(several)) == 1
    assert optimizer_stepped(Runner_())  # no wrapper: every iteration, as mmengine


def test_sharded_hook_skips_micro_batches_within_an_accumulation():
    model = torch.nn.Linear(3, 3)
    hook = ShardedEMAHook(momentum=0.5)

    class FakeRunner(Runner_):
        iter, epoch, max_iters, max_epochs, _resume = 0, 0, 10, 1, False

        def __init__(self, stepped):
            super().__init__(Wrapper(stepped))
            self.model = model

    hook.before_run(FakeRunner(True))
    hook.after_train_iter(FakeRunner(False), 0)
    assert hook.ema_model.steps == 0
    hook.after_train_iter(FakeRunner(True), 1)
    assert hook.ema_model.steps == 1


def test_the_one_card_recipe_of_the_docs(repo_root, tmp_path):
    """docs/distributed.md's command for Latte's global batch on one 24 GB card."""
    preset = osp.join(repo_root, 'configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_24gb.py')
    cfg = build_train_config(parse_args([
        preset, '--work-dir', str(tmp_path), '--cfg-options', 'global_batch_size=40',
        'optim_wrapper.accumulative_counts=8', 'train_cfg.max_iters=8000000']))
    assert cfg.train_dataloader.batch_size == 5
    assert cfg.optim_wrapper.accumulative_counts == 8
    emas = [h for h in cfg.custom_hooks if h['type'] == 'EMAHook']
    assert len(emas) == 1 and HOOKS.get(emas[0]['type']) is EMAHook


def test_resume_at_a_step_boundary_is_exact(repo_root, tmp_path):
    """k = 2, checkpoints every 2 iterations: a run resumed from iteration 4 ends as
    the uninterrupted one, weights and EMA bit for bit."""
    every = 'default_hooks.checkpoint.interval=2'
    full, _, whole = train(repo_root, tmp_path / 'full', 'EMAHook', 2, 6, every)
    again, states, resumed = train(repo_root, tmp_path / 'resumed', 'EMAHook', 2, 6,
                                   every, resume=str(tmp_path / 'full' / 'iter_4.pth'))
    assert len(states) == 2  # iterations 5 and 6: it did resume
    assert full.steps == again.steps == 3
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in full.module.state_dict().items():
        assert torch.equal(value, again.module.state_dict()[key]), key


def test_a_checkpoint_inside_a_step_is_refused(repo_root, tmp_path):
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path), '--cfg-options',
            'optim_wrapper.accumulative_counts=4', 'default_hooks.checkpoint.interval=10']
    with pytest.raises(UserError, match=r'interval=10 is not a multiple of the 4 '
                       r'micro-batches .* e\.g\. default_hooks\.checkpoint\.interval=12$'):
        build_train_config(parse_args(argv))
    # DeepSpeed's accumulation is filled in from the same setting, and checked.
    with pytest.raises(UserError, match='interval=10 is not a multiple of the 4'):
        build_train_config(parse_args([*argv, '--deepspeed', 'deepspeed_zero2']))
    build_train_config(parse_args([*argv[:-1], 'default_hooks.checkpoint.interval=12']))


def test_deepspeed_and_save_begin_are_checked_too(repo_root, tmp_path):
    from mmsora.engine.strategies import accumulation_of
    base = [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path), '--cfg-options',
            'optim_wrapper.accumulative_counts=4', 'default_hooks.checkpoint.interval=8']
    # DeepSpeed never steps a part-filled window: the run's length must be whole steps
    with pytest.raises(UserError, match=r'max_iters=10 is not a multiple of the 4 .* '
                       r'use 8 or 12$'):
        build_train_config(parse_args([*base, 'train_cfg.max_iters=10',
                                       '--deepspeed', 'deepspeed_zero2']))
    build_train_config(parse_args([*base, 'train_cfg.max_iters=10']))  # mmengine's does
    with pytest.raises(UserError, match=r'checkpoint.save_begin=2 is not a multiple'):
        build_train_config(parse_args([*base, 'default_hooks.checkpoint.save_begin=2']))
    # the strategy's own gradient_accumulation_steps wins over its config's 'auto'
    # (mmengine); next to another count there, which it dropped unsaid, it is refused
    assert accumulation_of(dict(strategy=dict(
        type='DeepSpeedStrategy', gradient_accumulation_steps=3,
        config=dict(gradient_accumulation_steps='auto')))) == 3
    with pytest.raises(UserError, match=r'^strategy\.gradient_accumulation_steps=3 and '
                       r'strategy\.config\.gradient_accumulation_steps=2: two micro-batch '
                       r'counts per optimizer step '):
        accumulation_of(dict(strategy=dict(
            type='DeepSpeedStrategy', gradient_accumulation_steps=3,
            config=dict(gradient_accumulation_steps=2))))


def test_noise_seed_with_accumulation_needs_the_hook_that_publishes_it(repo_root,
                                                                         tmp_path):
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path), '--cfg-options',
            'optim_wrapper.accumulative_counts=2', 'model.train_noise_seed=0']
    build_train_config(parse_args(argv))
    with pytest.raises(UserError, match='keep default_hooks.resume_check'):
        build_train_config(parse_args([*argv, 'default_hooks.resume_check=None']))


def test_resuming_an_older_checkpoint_with_accumulation_warns(repo_root, tmp_path):
    """Checkpoints written before the layout held the accumulation: the EMA's rate
    changes with this version (once per step), which the log says."""
    import glob

    every = 'default_hooks.checkpoint.interval=2'
    train(repo_root, tmp_path / 'old', 'EMAHook', 2, 2, every)
    ckpt = torch.load(tmp_path / 'old' / 'iter_2.pth', weights_only=False)
    del ckpt['meta']['run_layout']['accumulation']
    torch.save(ckpt, tmp_path / 'older.pth')
    train(repo_root, tmp_path / 'new', 'EMAHook', 2, 4, every,
          resume=str(tmp_path / 'older.pth'))
    log = open(glob.glob(str(tmp_path / 'new' / '*' / '*.log'))[0]).read()
    assert 'the EMA now moves once per optimizer step' in log


def test_resume_with_another_accumulation_is_refused(repo_root, tmp_path):
    every = 'default_hooks.checkpoint.interval=2'
    train(repo_root, tmp_path / 'k2', 'EMAHook', 2, 2, every)
    with pytest.raises(UserError, match=r'saved by a run of 1 process x batch size 4 x 2 '
                       r'micro-batches per step \(global 8\), this run has 1 process x '
                       r'batch size 4 \(global 4\)'):
        train(repo_root, tmp_path / 'k1', 'EMAHook', 1, 4, every, 'global_batch_size=4',
              resume=str(tmp_path / 'k2' / 'iter_2.pth'))

"""What a run with gradient accumulation (optim_wrapper.accumulative_counts = k) logs,
and the note on a warm-up counted in iterations. The loss goes to the log once per
optimizer step, the mean of its k micro-batches, as grad_norm does (LossGuardHook);
before, the loss went in at every micro-batch (a line showed one micro-batch's loss at
iteration 1) and grad_norm at every step. Every hook still sees each micro-batch's own
outputs, the logger's lines fall on the iterations that end a step, and the schedulers
do not warn of stepping before the optimizer."""
import glob
import json
import math
import os.path as osp
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook, ParamSchedulerHook
from mmengine.runner import Runner

from mmsora.engine.strategies.train_options import check_accumulation, warmup_note
from tests.tiny_models import TINY_TRAIN
from tools.train import build_train_config, parse_args

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'


class SeenOutputs(Hook):
    """What a hook after LossGuardHook gets as ``outputs`` (as mmdet's
    CheckInvalidLossHook, which asserts ``torch.isfinite(outputs['loss'])``)."""

    def __init__(self):
        self.seen = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        assert torch.isfinite(outputs['loss'])
        self.seen.append(dict(outputs))


def train(repo_root, work_dir, accumulate, iters, *options):
    """The tiny demo (its own warm-up kept), logger interval 1; returns the runner,
    each micro-batch's outputs (the model's, before any hook), the outputs a later
    hook saw, and the warnings of the run."""
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(work_dir), '--cfg-options',
            *[o for o in TINY_TRAIN if not o.startswith('param_scheduler')],
            f'train_cfg.max_iters={iters}', f'optim_wrapper.accumulative_counts={accumulate}',
            'default_hooks.checkpoint.interval=100', *options]
    cfg = build_train_config(parse_args(argv))
    cfg.experiment_name = f'log-{accumulate}-{iters}-{osp.basename(str(work_dir))}'
    runner = Runner.from_cfg(cfg)
    micro = []
    train_step = runner.model.train_step

    def recorded(data, optim_wrapper):
        outputs = train_step(data, optim_wrapper=optim_wrapper)
        micro.append({k: float(v.detach()) for k, v in outputs.items()})
        return outputs

    runner.model.train_step = recorded
    seen = SeenOutputs()
    runner.register_hook(seen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        runner.train()
    return runner, micro, seen.seen, [str(w.message) for w in caught]


def logged_lines(work_dir):
    """The scalars.json lines of the run (one per logged iteration)."""
    path, = glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_log(work_dir):
    path, = glob.glob(osp.join(str(work_dir), '*', '*.log'))
    with open(path) as f:
        return f.read()


def test_the_loss_is_logged_once_per_optimizer_step(repo_root, tmp_path, capsys):
    # 4 micro-batches, 2 per optimizer step: 2 steps.
    runner, micro, seen, warned = train(repo_root, tmp_path, accumulate=2, iters=4)
    assert len(micro) == 4
    # a later hook sees every micro-batch's own loss tensor (it saw no 'loss' at
    # iterations 1 and 3, a float mean at 2 and 4: KeyError, then TypeError)
    assert len(seen) == 4
    for outputs, own in zip(seen, micro):
        assert all(torch.is_tensor(v) for v in outputs.values()), outputs
        assert {k: float(v.detach()) for k, v in outputs.items()} == own
    hub = runner.message_hub
    losses = list(hub.get_scalar('train/loss').data[0])
    steps = [(micro[0]['loss'] + micro[1]['loss']) / 2,
             (micro[2]['loss'] + micro[3]['loss']) / 2]
    assert losses == pytest.approx(steps, rel=1e-6)  # (not the 4 micro-batches')
    for term in ('mse', 'vb'):  # the terms alike, so that they add up to the loss
        values = list(hub.get_scalar(f'train/{term}').data[0])
        assert values == pytest.approx([(micro[0][term] + micro[1][term]) / 2,
                                        (micro[2][term] + micro[3][term]) / 2], rel=1e-6)
    assert len(hub.get_scalar('train/grad_norm').data[0]) == 2  # once per step too
    # The logger's interval (1) counts optimizer steps: a line (and a scalars.json
    # row) at each step's last iteration. Iteration 3's line repeated iteration 2's
    # loss and grad_norm, and iteration 1's had none.
    lines = {line['iter']: line for line in logged_lines(tmp_path) if 'iter' in line}
    assert sorted(lines) == [2, 4]
    assert lines[2]['loss'] == pytest.approx(steps[0], abs=1e-4)
    assert lines[4]['loss'] == pytest.approx(sum(steps) / 2, abs=1e-4)  # the window's
    assert all('grad_norm' in line and 'lr' in line for line in lines.values())
    log = run_log(tmp_path)
    assert 'Iter(train) [2/4]' in log and 'Iter(train) [4/4]' in log
    assert 'Iter(train) [1/4]' not in log and 'Iter(train) [3/4]' not in log
    assert ('gradient accumulation: 2 micro-batches (iterations) per optimizer step; loss '
            'and its terms are logged once per step, the mean of its 2 micro-batches, and '
            "grad_norm once per step: a line every 1 optimizer step (the logger's "
            'interval=1 counts steps: 2 iterations) shows their means over the last 50 '
            'optimizer steps (time and data_time: per iteration)') in log
    # the schedulers stepped at iteration 1, before the first optimizer step (2):
    # mmengine's warning of a wrong call order is not the user's to act on
    assert not [w for w in warned if 'before `optimizer.step()`' in w], warned
    # the demo's warm-up (LinearLR, 100 iterations) is said in optimizer steps
    assert ('note: param_scheduler.0 (LinearLR) warms the learning rate up over 100 '
            'iterations (by_epoch=False), which at optim_wrapper.accumulative_counts=2 '
            '(micro-batches per optimizer step) are 50 optimizer steps; for 100 optimizer '
            'steps, as without accumulation: --cfg-options param_scheduler.0.end=200 '
            'param_scheduler.1.begin=200') in capsys.readouterr().err


def test_the_runs_last_step_is_logged_where_it_ends_a_part_filled_accumulation(
        repo_root, tmp_path):
    """mmengine steps the optimizer at the run's last iteration whatever the count: at
    k=2 and 5 iterations, a third step of one micro-batch at iteration 5, off the grid
    of 2 iterations, which went without a line (scalars.json had iterations 2 and 4)."""
    runner, micro, _, _ = train(repo_root, tmp_path, accumulate=2, iters=5)
    losses = list(runner.message_hub.get_scalar('train/loss').data[0])
    steps = [(micro[0]['loss'] + micro[1]['loss']) / 2,
             (micro[2]['loss'] + micro[3]['loss']) / 2, micro[4]['loss']]
    assert losses == pytest.approx(steps, rel=1e-6)
    lines = {line['iter']: line for line in logged_lines(tmp_path) if 'iter' in line}
    assert sorted(lines) == [2, 4, 5]
    assert lines[5]['loss'] == pytest.approx(sum(steps) / 3, abs=1e-4)  # the window's
    assert 'grad_norm' in lines[5]
    assert 'Iter(train) [5/5]' in run_log(tmp_path)
    # the logger's interval counts steps: at 2 steps a line, the last step (the 4th, at
    # iteration 7) has one, as the 2nd (iteration 4); at 5 iterations the last is the
    # 3rd, which has none (nor has the 3rd at 3 iterations without accumulation)
    for iters, logged in ((7, [4, 7]), (5, [4])):
        work_dir = tmp_path / f'every-2-steps-{iters}'
        train(repo_root, work_dir, 2, iters, 'default_hooks.logger.interval=2')
        assert sorted(line['iter'] for line in logged_lines(work_dir)
                      if 'iter' in line) == logged


def test_without_accumulation_every_iteration_is_logged(repo_root, tmp_path, capsys):
    runner, micro, seen, _ = train(repo_root, tmp_path, accumulate=1, iters=2)
    losses = list(runner.message_hub.get_scalar('train/loss').data[0])
    assert losses == pytest.approx([m['loss'] for m in micro], rel=1e-6)
    assert [{k: float(v.detach()) for k, v in out.items()} for out in seen] == micro
    assert sorted(line['iter'] for line in logged_lines(tmp_path) if 'iter' in line) \
        == [1, 2]
    assert 'gradient accumulation' not in run_log(tmp_path)
    assert 'warms the learning rate up' not in capsys.readouterr().err


def schedule_cfg(accumulate, schedulers, **extra):
    return Config(dict(optim_wrapper=dict(accumulative_counts=accumulate),
                       param_scheduler=schedulers, **extra))


WARMUP = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
          dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=1500)]


def test_the_warmup_note_is_said_only_for_a_warmup_in_iterations(capsys):
    check_accumulation(schedule_cfg(8, WARMUP))
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('note: param_scheduler.0 (LinearLR)')
    assert ('are 12.5 optimizer steps; for 100 optimizer steps, as without accumulation: '
            '--cfg-options param_scheduler.0.end=800 param_scheduler.1.begin=800') in err
    # one scheduler given as a dict; mmengine's ConstantLR warm-up (factor < 1)
    said = warmup_note(schedule_cfg(
        4, dict(type='ConstantLR', factor=0.1, by_epoch=False, end=40)))
    assert said.startswith('param_scheduler (ConstantLR) warms the learning rate up over '
                           '40 iterations')
    assert said.endswith('are 10 optimizer steps; for 40 optimizer steps, as without '
                         'accumulation: --cfg-options param_scheduler.end=160')
    # a DeepSpeed strategy's own accumulation names its setting
    said = warmup_note(Config(dict(
        strategy=dict(type='DeepSpeedStrategy', gradient_accumulation_steps=2),
        param_scheduler=WARMUP)))
    assert 'at strategy.gradient_accumulation_steps=2 (micro-batches' in said
    for cfg in (schedule_cfg(1, WARMUP),  # no accumulation
                schedule_cfg(2, [dict(WARMUP[0], by_epoch=True)]),  # epochs: no change
                # the ImageNet recipe's constant rate: no warm-up
                schedule_cfg(2, [dict(type='ConstantLR', factor=1.0, by_epoch=False)]),
                schedule_cfg(2, [dict(type='LinearLR', by_epoch=False)]),  # no end
                schedule_cfg(2, WARMUP[1:]),  # no warm-up
                schedule_cfg(2, WARMUP, resume=True)):  # the checkpoint's schedule
        assert warmup_note(cfg) is None, cfg.param_scheduler
        check_accumulation(cfg)
    assert capsys.readouterr().err == ''


@pytest.mark.parametrize('options, setting', [
    # the preset's gradient_accumulation_steps='auto' is filled from it: the note named
    # strategy.config.gradient_accumulation_steps=2, which the user never typed
    (['optim_wrapper.accumulative_counts=2'], 'optim_wrapper.accumulative_counts=2'),
    (['strategy.config.gradient_accumulation_steps=2'],
     'strategy.config.gradient_accumulation_steps=2')])
def test_the_warmup_note_names_the_accumulation_setting_given_under_deepspeed(
        repo_root, tmp_path, capsys, options, setting):
    own = tmp_path / 'dit_zero2.py'  # the preset inherited: the config's own strategy
    own.write_text(f"_base_ = ['{osp.join(repo_root, DEMO)}', "
                   f"'{osp.join(repo_root, 'configs/_base_/strategies/deepspeed_zero2.py')}']\n")
    for config, flags in ((osp.join(repo_root, DEMO), ['--deepspeed', 'deepspeed_zero2']),
                          (str(own), [])):
        cfg = build_train_config(parse_args(
            [config, *flags, '--work-dir', str(tmp_path), '--cfg-options',
             'train_cfg.max_iters=1500', *options]))
        assert cfg.strategy.config.gradient_accumulation_steps == 2  # (what DeepSpeed runs)
        notes = [line for line in capsys.readouterr().err.splitlines()
                 if 'warms the learning rate up' in line]
        assert notes == [
            'note: param_scheduler.0 (LinearLR) warms the learning rate up over 100 '
            f'iterations (by_epoch=False), which at {setting} (micro-batches per optimizer '
            'step) are 50 optimizer steps; for 100 optimizer steps, as without accumulation: '
            '--cfg-options param_scheduler.0.end=200 param_scheduler.1.begin=200'], config


def test_a_nonfinite_micro_batch_is_left_out_of_its_steps_mean():
    """LossGuardHook's per-step log on its own: a NaN term of one micro-batch is left
    out (the step was skipped), the other micro-batch's value is logged; the outputs
    it is given stay as they were (the other hooks read them)."""
    from mmsora.engine.hooks.loss_guard_hook import LossGuardHook

    class Wrapper:
        _inner_count, _accumulative_counts = 0, 2

        def should_update(self):
            return self._inner_count % 2 == 0

    class Runner_:
        optim_wrapper = Wrapper()

    hook, runner = LossGuardHook(), Runner_()
    hook._accumulation, hook._guarding = 2, True
    logged = []
    for i, (loss, mse) in enumerate([(1.0, float('nan')), (3.0, 2.0), (5.0, 4.0),
                                     (7.0, 6.0)]):
        runner.optim_wrapper._inner_count = i + 1
        outputs = dict(loss=torch.tensor(loss), mse=torch.tensor(mse))
        hook.after_train_iter(runner, i, outputs=outputs)
        logged.append(hook.logged_values(runner, outputs))
        assert outputs.keys() == {'loss', 'mse'} and float(outputs['loss']) == loss
    assert logged == [{}, dict(loss=2.0, mse=2.0), {}, dict(loss=6.0, mse=5.0)]
    assert not any(math.isnan(v) for out in logged for v in out.values())


def test_only_the_early_scheduler_warning_is_left_out():
    """While the optimizer has not stepped yet (iterations 1 to k-1 with accumulation)
    the schedulers' 'before `optimizer.step()`' warning is left out, no other one; from
    the first optimizer step on, and after training, the hook's warnings are its own."""
    from mmsora.engine.hooks.loss_guard_hook import LossGuardHook

    early = ('Detected call of `scheduler.step()` before `optimizer.step()`. In PyTorch '
             '1.1.0 and later, you should call them in the opposite order')

    class Scheduling(ParamSchedulerHook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            warnings.warn(early, UserWarning)
            warnings.warn('another warning', UserWarning)

    class Wrapper:  # not an OptimWrapper: LossGuardHook warns that it cannot guard it
        _inner_count, _accumulative_counts, _global_step = 0, 2, -1

    class Logger:
        def __init__(self):
            self.lines = []

        def info(self, line):
            self.lines.append(line)

        warning = info

    class Runner_:
        optim_wrapper, logger, hooks = Wrapper(), Logger(), [Scheduling()]

    def warned(runner):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            runner.hooks[0].after_train_iter(runner, 0)
        return [str(w.message)[:len(early)] for w in caught]

    hook, runner = LossGuardHook(), Runner_()
    filters = list(warnings.filters)
    hook.before_train(runner)
    assert warned(runner) == ['another warning']
    assert warnings.filters == filters  # (scoped to the scheduler hook's call)
    runner.optim_wrapper._global_step = 0  # the optimizer stepped
    assert warned(runner) == [early, 'another warning']
    runner.optim_wrapper._global_step = -1
    hook.after_train(runner)
    assert warned(runner) == [early, 'another warning']
    assert 'its steps are not guarded' in runner.logger.lines[-1]

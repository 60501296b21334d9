"""LossGuardHook: a NaN/inf loss skips the step with a warning, K in a row stop the
run naming the iteration, and the gradient norm is logged."""
import glob
import math

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmsora.engine import LossGuardHook, NonFiniteLossError
from mmsora.engine.hooks.loss_guard_hook import grad_norm
from mmsora.utils.cli import explain_error
from tests.test_engine.test_train import tiny_cfg


class _PoisonIters(Hook):
    """Multiply the denoiser's output by ``value`` (nan or inf) at the given
    iterations (0-based), so that loss and gradients are not finite there; record
    the weights around each iteration."""

    priority = 'HIGHEST'

    def __init__(self, iters, value=float('nan')):
        self.iters, self.value = set(iters), value
        self.handle, self.changed = None, {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.before = [p.detach().clone() for p in runner.model.denoiser.parameters()]
        if runner.iter in self.iters:
            self.handle = runner.model.denoiser.register_forward_hook(
                lambda m, i, out: out * self.value)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        after = list(runner.model.denoiser.parameters())
        self.changed[runner.iter] = any(not torch.equal(a, b)
                                        for a, b in zip(self.before, after))


def _run(repo_root, tmp_path, iters, poisoned, *options, value=float('nan')):
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, iters, *options))
    poison = _PoisonIters(poisoned, value=value)
    runner.register_hook(poison)
    return runner, poison


def test_nonfinite_steps_are_skipped(repo_root, tmp_path):
    runner, poison = _run(repo_root, tmp_path, 9, [2, 5, 6])
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        runner.train()
    # reading the losses did not warn of converting a tensor that requires grad
    assert not [w for w in caught if 'requires_grad' in str(w.message)], \
        [str(w.message) for w in caught]
    # Weights move on every good step and stay put on the poisoned ones.
    assert [it for it, moved in sorted(poison.changed.items()) if not moved] == [2, 5, 6]
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    optimizer = runner.optim_wrapper.optimizer
    assert {int(s['step']) for s in optimizer.state.values()} == {6}
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    for iteration, row in ((3, 1), (6, 1), (7, 2)):
        assert (f'iteration {iteration}: loss nan, gradient norm nan; skipping this '
                f'optimizer step ({row} in a row') in log
    guard = [h for h in runner.hooks if isinstance(h, LossGuardHook)][0]
    assert guard.num_skipped == 3
    # The skipped steps' NaN losses are left out of the log: averaged over its window
    # they showed as 'loss: nan' for the next 50 iterations.
    for key in ('train/loss', 'train/mse'):
        logged = list(runner.message_hub.get_scalar(key).data[0])
        assert len(logged) == 6 and all(math.isfinite(v) for v in logged), (key, logged)


def test_a_nan_in_an_accumulated_steps_first_micro_batch_is_not_logged(repo_root,
                                                                       tmp_path):
    """The step is decided at its last micro-batch; the NaN loss of an earlier one was
    logged in its own iteration (review of the log fix)."""
    runner, _ = _run(repo_root, tmp_path, 6, [2], 'optim_wrapper.accumulative_counts=2')
    runner.train()
    logged = list(runner.message_hub.get_scalar('train/loss').data[0])
    assert len(logged) == 5 and all(math.isfinite(v) for v in logged), logged


def test_an_inf_loss_is_skipped_too(repo_root, tmp_path):
    runner, poison = _run(repo_root, tmp_path, 3, [1], value=float('inf'))
    runner.train()
    assert [moved for _, moved in sorted(poison.changed.items())] == [True, False, True]
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_k_in_a_row_stop_the_run_naming_the_iteration(repo_root, tmp_path):
    runner, _ = _run(repo_root, tmp_path, 10, [1, 3, 4, 5],
                     'default_hooks.loss_guard.max_consecutive=3')
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    assert runner.iter == 5  # stopped in iteration 6 (1-based), before finishing it
    assert explain_error(info.value).startswith(
        'the loss or gradient was not finite in 3 iterations in a row (4 to 6; at 6: '
        'loss nan, gradient norm nan); stopping.')
    assert explain_error(info.value).endswith(
        'then start again (no checkpoint was saved yet)')  # (not '--resume from ...')


def test_one_allowed_is_said_in_the_singular_and_the_checkpoint_named(repo_root,
                                                                     tmp_path):
    runner, _ = _run(repo_root, tmp_path, 10, [3], 'default_hooks.loss_guard.max_consecutive=1',
                     'default_hooks.checkpoint.interval=2')
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    assert explain_error(info.value).startswith(
        'the loss or gradient was not finite in 1 iteration in a row (4; at 4: loss nan')
    assert explain_error(info.value).endswith('then --resume from the last checkpoint')


def test_grad_norm_is_logged(repo_root, tmp_path):
    # Without clip_grad mmengine logs no grad_norm: the guard does.
    runner, _ = _run(repo_root, tmp_path, 3, [], 'optim_wrapper.clip_grad=None')
    captured = []
    runner.register_hook(_Capture(captured))
    runner.train()
    logged = list(runner.message_hub.get_scalar('train/grad_norm').data[0])
    assert len(logged) == 3 and logged == captured
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    assert 'grad_norm:' in log


class _Capture(Hook):
    """The gradient norm computed independently (torch's clip_grad_norm_ with an
    infinite bound returns the total norm) just before each optimizer step."""

    priority = 'LOWEST'

    def __init__(self, out):
        self.out = out

    def before_train(self, runner):
        step = runner.optim_wrapper.step

        def recording_step(**kwargs):
            params = [p for p in runner.model.parameters() if p.grad is not None]
            self.out.append(float(torch.nn.utils.clip_grad_norm_(params, math.inf)))
            step(**kwargs)

        runner.optim_wrapper.step = recording_step


def test_grad_norm_of_no_gradients_is_zero():
    param = torch.nn.Parameter(torch.ones(3))
    wrapper = type('W', (), {'optimizer': torch.optim.SGD([param], lr=1.0)})()
    assert grad_norm(wrapper) == 0.0
    param.grad = torch.tensor([3.0, 4.0, 0.0])
    assert grad_norm(wrapper) == 5.0


class _FakeRunner:
    """What the guard touches of a runner."""

    def __init__(self, optim_wrapper):
        from mmengine.logging import MessageHub, MMLogger
        self.optim_wrapper, self.iter = optim_wrapper, 0
        self.logger = MMLogger.get_instance('loss_guard_test')
        self.message_hub = MessageHub.get_instance('loss_guard_test')


def test_with_a_loss_scaler_only_the_loss_is_checked_and_the_scaler_still_runs():
    from mmengine.optim import OptimWrapper

    class ScaledWrapper(OptimWrapper):  # stands in for fp16 AmpOptimWrapper (needs CUDA)
        loss_scaler = object()
        steps = 0

        def step(self, **kwargs):
            self.steps += 1  # GradScaler.step: skips inf grads itself, lowers the scale

    param = torch.nn.Parameter(torch.ones(2))
    wrapper = ScaledWrapper(optimizer=torch.optim.SGD([param], lr=0.1))
    runner = _FakeRunner(wrapper)
    guard = LossGuardHook(max_consecutive=2)
    guard.before_train(runner)
    wrapper.update_params((param * float('inf')).sum())  # an inf loss: counted as
    assert guard.num_skipped == 1 and wrapper.steps == 1  # skipped, the scaler still runs
    wrapper.update_params((param * 2).sum())
    assert guard.num_skipped == 1 and wrapper.steps == 2


def test_other_wrappers_are_left_alone():
    from mmengine.optim import OptimWrapper, OptimWrapperDict
    param = torch.nn.Parameter(torch.ones(2))
    wrappers = OptimWrapperDict(a=OptimWrapper(torch.optim.SGD([param], lr=0.1)))
    runner = _FakeRunner(wrappers)
    LossGuardHook().before_train(runner)
    assert 'step' not in vars(wrappers['a'])  # not wrapped


def test_default_hooks_of_ours_set_to_none_are_off(repo_root, tmp_path):
    """``--cfg-options default_hooks.loss_guard=None`` (docs/reliability.md) turns the
    guard off: mmengine's Runner takes None only for its own default hooks and failed
    with an AssertionError; tools/train.py drops ours, and NaN steps then go through."""
    cfg = tiny_cfg(repo_root, tmp_path, 3, 'default_hooks.loss_guard=None',
                   'default_hooks.timer=None')
    assert 'loss_guard' not in cfg.default_hooks
    assert cfg.default_hooks.timer is None  # mmengine's own: the Runner removes it
    runner = Runner.from_cfg(cfg)
    runner.register_hook(_PoisonIters([1]))
    runner.train()
    names = [type(h).__name__ for h in runner.hooks]
    assert 'LossGuardHook' not in names and 'IterTimerHook' not in names
    weights = list(runner.model.denoiser.parameters())
    assert not all(torch.isfinite(w).all() for w in weights)  # nothing skipped the step


def test_a_learning_rate_schedule_does_not_warn_of_an_overridden_step(repo_root, tmp_path):
    """The hook's own optimizer step lacked the mark mmengine's schedulers put on the
    step they count: every run with a schedule warned 'optimizer.step() has been
    overridden after parameter value scheduler initialization'."""
    import warnings
    cfg = tiny_cfg(repo_root, tmp_path, 3)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False,
                                begin=0, end=3)]
    runner = Runner.from_cfg(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        runner.train()
    assert [h for h in runner.hooks if isinstance(h, LossGuardHook)][0]._guarding
    assert not [w for w in caught if 'overridden' in str(w.message)], \
        [str(w.message) for w in caught]
    assert runner.optim_wrapper._global_step == 2  # the schedulers' count goes on

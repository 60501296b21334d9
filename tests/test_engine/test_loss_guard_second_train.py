"""LossGuardHook under a second ``runner.train()`` of the same runner (a notebook, a
test, a graceful stop's restore): it wrapped the optimizer wrapper's step and backward
again at each train(), over the guards of the run before, so that a NaN at one
iteration had the next finite step skipped too (the inner guard kept the NaN loss of
the step the outer one skipped); and a run that stopped at a NaN left its guard on,
its NaN gradients and its count of skips in a row."""
import logging
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner

from mmsora.engine import LossGuardHook, NonFiniteLossError
from mmsora.engine.hooks import loss_guard_hook
from tests.tiny_data import logged_messages
from tests.tiny_models import tiny_cfg

pytestmark = pytest.mark.usefixtures('kept_environ')


class _NaNAt(Hook):
    """Make the loss NaN at the given iterations (as the log counts them, from 1) and
    record, at every other one, whether the weights changed (the step was taken)."""

    priority = 'HIGHEST'

    def __init__(self, iterations):
        self.iterations, self.handle, self.stepped = set(iterations), None, {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.before = [p.detach().clone() for p in runner.model.denoiser.parameters()]
        if runner.iter + 1 in self.iterations:
            self.handle = runner.model.denoiser.register_forward_hook(
                lambda m, i, out: out * float('nan'))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        after = runner.model.denoiser.parameters()
        self.stepped[runner.iter + 1] = any(not torch.equal(a, b)
                                            for a, b in zip(self.before, after))


@pytest.fixture
def guard_checks(monkeypatch):
    """How many times the guard checked a step's gradient (once per guard a step
    went through)."""
    calls = []
    norm = loss_guard_hook.grad_norm

    def counted(*args, **kwargs):
        calls.append(1)
        return norm(*args, **kwargs)

    monkeypatch.setattr(loss_guard_hook, 'grad_norm', counted)
    return calls


def _guard(runner):
    guard, = [h for h in runner.hooks if isinstance(h, loss_guard_hook.LossGuardHook)]
    return guard


def _unwrapped(runner):
    """Nothing of the guard's is left on the optimizer wrapper or the other hooks."""
    return ('step' not in vars(runner.optim_wrapper)
            and 'backward' not in vars(runner.optim_wrapper)
            and not [h for h in runner.hooks if 'after_train_iter' in vars(h)])


def test_a_second_train_guards_each_step_once(repo_root, tmp_path, guard_checks):
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 2,
                                      'default_hooks.checkpoint.interval=100'))
    nan = _NaNAt({3})
    runner.register_hook(nan)
    runner.train()
    assert len(guard_checks) == 2
    unwrapped_between = _unwrapped(runner)
    runner.train_loop._max_iters = 6
    runner.train()
    # one guard: iterations 3 to 6 checked once each (8 checks with two guards)
    assert len(guard_checks) == 2 + 4
    # iteration 3's NaN is skipped, and only it: iteration 4's finite step was
    # skipped as 'loss nan' by the guard of the first train()
    assert nan.stepped == {1: True, 2: True, 3: False, 4: True, 5: True, 6: True}
    assert _guard(runner).num_skipped == 1
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    assert unwrapped_between and _unwrapped(runner)


class _Interrupt(Exception):
    """A run stopped by an error (a full disk, a bug in a hook of one's own)."""


class _StopAt(Hook):
    """Raise :class:`_Interrupt` before the given iteration (as the log counts), before
    :class:`_NaNAt` (registered after it) sees that iteration."""

    priority = 'HIGHEST'

    def __init__(self, iteration):
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.iteration:
            raise _Interrupt(f'stopped before iteration {self.iteration}')


def test_a_train_after_one_that_raised_guards_each_step_once(repo_root, tmp_path,
                                                             guard_checks):
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 3,
                                      'default_hooks.checkpoint.interval=100'))
    stop, nan = _StopAt(2), _NaNAt({2})
    runner.register_hook(stop)
    runner.register_hook(nan)
    with pytest.raises(_Interrupt):
        runner.train()  # (after_train is not called: the guard stays on till the next)
    assert len(guard_checks) == 1
    stop.iteration = None
    runner.train()
    assert len(guard_checks) == 1 + 2  # iterations 2 and 3, checked once each
    assert nan.stepped == {1: True, 2: False, 3: True}
    assert _guard(runner).num_skipped == 1
    assert _unwrapped(runner)


# ---------------------------------------------------------------------------------
# A train() after one the guard stopped
# ---------------------------------------------------------------------------------

def _stopped_runner(repo_root, tmp_path, max_iters):
    """A runner whose first train() the guard stopped: NaN at iterations 2 and 3 with
    ``max_consecutive=2`` (the stop at 3, after 2 iterations). Returns it and its
    :class:`_NaNAt`, ready for a second train() without NaN."""
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, max_iters,
                                      'default_hooks.checkpoint.interval=100',
                                      'default_hooks.loss_guard.max_consecutive=2'))
    nan = _NaNAt({2, 3})
    runner.register_hook(nan)
    with pytest.raises(loss_guard_hook.NonFiniteLossError) as info:
        runner.train()
    assert 'not finite in 2 iterations in a row (2 to 3; at 3: loss nan' in str(info.value)
    nan.handle.remove()  # (iteration 3's: its after_train_iter did not run)
    nan.iterations, nan.stepped, nan.handle = set(), {}, None
    return runner, nan


def test_a_train_after_the_guard_stopped_the_run_takes_its_first_step(repo_root,
                                                                      tmp_path):
    """The stop left the NaN gradients of iteration 3 in ``p.grad`` (mmengine's
    zero_grad after the step never ran): the next train() added its first finite
    step's gradients to them, skipped it as non-finite and, the skip counted onto the
    stopped run's 2, stopped at once ('3 iterations in a row (2 to 3 ...)')."""
    runner, nan = _stopped_runner(repo_root, tmp_path, 4)
    assert all(p.grad is None or torch.isfinite(p.grad).all()
               for p in runner.model.parameters())
    runner.train()  # iterations 3 (the stopped one, again) and 4, finite
    assert nan.stepped == {3: True, 4: True}
    assert _guard(runner).num_skipped == 2  # the stopped run's, none since
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_a_train_after_the_guard_stopped_the_run_counts_skips_in_a_row_afresh(
        repo_root, tmp_path):
    """A NaN at the first iteration of the next train(): one skip in a row, not the
    stopped run's 2 and this one (which stopped it again at its first step)."""
    runner, nan = _stopped_runner(repo_root, tmp_path, 5)
    nan.iterations = {3}
    with logged_messages(runner.logger, logging.WARNING) as said:
        runner.train()
    skips = [line for line in said if 'skipping this optimizer step' in line]
    assert len(skips) == 1 and skips[0].startswith('iteration 3: loss nan'), said
    assert '(1 in a row, 3 in all; the run stops after 2 in a row)' in skips[0], skips
    assert nan.stepped == {3: False, 4: True, 5: True}


class _CPUScaledWrapper(OptimWrapper):
    """mmengine's ``AmpOptimWrapper`` (backward, step) with a real ``GradScaler`` on
    the CPU (``AmpOptimWrapper`` asserts a GPU)."""

    backward, step = AmpOptimWrapper.backward, AmpOptimWrapper.step

    def __init__(self, optimizer):
        super().__init__(optimizer)
        self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 8)
        self._scale_update_param = None


def test_a_stop_with_a_loss_scaler_clears_the_gradients_and_leaves_the_scaler_whole():
    """fp16 loss scaling: a skipped step still runs the scaler's step (which lowers
    its scale); the stop runs none and clears the gradients, so that the next train()
    steps with a clean gradient and a scaler it can unscale_ (a scaler left mid-step
    raises 'unscale_() has already been called on this optimizer')."""
    from mmengine.logging import MessageHub, MMLogger
    param = torch.nn.Parameter(torch.ones(2))
    wrapper = _CPUScaledWrapper(torch.optim.SGD([param], lr=0.1))
    runner = SimpleNamespace(optim_wrapper=wrapper, iter=0, work_dir='',
                             logger=MMLogger.get_instance('loss_guard_scaler_test'),
                             message_hub=MessageHub.get_instance('loss_guard_scaler_test'))
    guard = LossGuardHook(max_consecutive=2)
    guard.before_train(runner)
    wrapper.update_params((param * float('nan')).sum())  # skipped: the scaler lowers
    assert wrapper.loss_scaler.get_scale() == 2.0 ** 7 and guard.num_skipped == 1
    with pytest.raises(NonFiniteLossError):
        wrapper.update_params((param * float('nan')).sum())
    assert param.grad is None  # (NaN without the fix)
    assert wrapper.loss_scaler.get_scale() == 2.0 ** 7  # its step did not run
    guard.before_train(runner)  # a second runner.train()
    wrapper.update_params((param * 3).sum())
    assert torch.allclose(param.detach(), torch.full((2,), 1 - 0.1 * 3))
    assert guard.num_skipped == 2 and guard._in_a_row == []
    guard.after_train(runner)

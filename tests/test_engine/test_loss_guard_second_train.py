"""LossGuardHook under a second ``runner.train()`` of the same runner (a notebook, a
test, a graceful stop's restore): it wrapped the optimizer wrapper's step and backward
again at each train(), over the guards of the run before, so that a NaN at one
iteration had the next finite step skipped too (the inner guard kept the NaN loss of
the step the outer one skipped); and a run that stopped at a NaN left its guard on."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmsora.engine.hooks import loss_guard_hook
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

"""LossGuardHook: a NaN/inf loss skips the step with a warning, K in a row stop the
run naming the iteration, and the gradient norm is logged."""
import glob
import math
import re
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmsora.engine import LossGuardHook, NonFiniteLossError
from mmsora.engine.hooks.loss_guard_hook import grad_norm
from mmsora.utils.error_messages import explain_error
from tests.tiny_data import LineLogger
from tests.tiny_models import tiny_cfg


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
    # the poison is in the model's output, not in the data: the batches are finite,
    # their 8 items named by their index
    assert len(re.findall(r'in a row\); the batch: items (\d+, ){7}\d+ \(their inputs are '
                          r'finite\)\n', log)) == 3, log
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
    logged in its own iteration (review of the log fix). The loss is logged once per
    optimizer step (3 of 6 iterations), the skipped step's from its finite micro-batch."""
    runner, _ = _run(repo_root, tmp_path, 6, [2], 'optim_wrapper.accumulative_counts=2')
    runner.train()
    logged = list(runner.message_hub.get_scalar('train/loss').data[0])
    assert len(logged) == 3 and all(math.isfinite(v) for v in logged), logged


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
    assert re.match(
        r'the loss or gradient was not finite in 3 iterations in a row \(4 to 6; at 6: '
        r'loss nan, gradient norm nan; the batch: items (\d+, ){7}\d+ \(their inputs are '
        r'finite\)\); stopping\.', explain_error(info.value)), explain_error(info.value)
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


def test_grad_norm_is_not_logged_when_told_not_to(repo_root, tmp_path):
    # log_grad_norm=False: the steps still guarded, no grad_norm of the guard's
    runner, _ = _run(repo_root, tmp_path, 3, [], 'optim_wrapper.clip_grad=None',
                     'default_hooks.loss_guard.log_grad_norm=False')
    runner.train()
    assert 'train/grad_norm' not in runner.message_hub.log_scalars
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    assert 'grad_norm:' not in log and 'loss:' in log


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


# --------------------------------------------------------------------------- #
#            the items of a skipped step's batch (which one holds a NaN)        #
# --------------------------------------------------------------------------- #
class _PoisonLatents(Hook):
    """Put a NaN into the latents of the batch's item at ``position`` at iteration
    ``at`` (0-based), keeping that item's dataset index (``sample_idx``, which
    LossGuardHook, before it, took out of the batch)."""

    priority = 'HIGHEST'

    def __init__(self, at, position):
        self.at, self.position, self.index = at, position, None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at:
            assert 'sample_idx' not in data_batch  # the model never sees it
            guard = [h for h in runner.hooks if isinstance(h, LossGuardHook)][0]
            self.index = guard._batch_indices[self.position]
            data_batch['latents'][self.position, 0, 0, 0] = float('nan')


def _log_of(tmp_path):
    return open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()


def test_a_nan_in_the_latents_is_named_by_its_item(repo_root, tmp_path):
    """The warning named the iteration only: a corrupt item could not be found. The
    demo's items carry their index (sample_idx) as every mmsora dataset's do."""
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 3))
    poison = _PoisonLatents(at=1, position=3)
    runner.register_hook(poison)
    runner.train()
    assert isinstance(poison.index, int)
    assert ('iteration 2: loss nan, gradient norm nan; skipping this optimizer step (1 in '
            'a row, 1 in all; the run stops after 5 in a row); non-finite latents in the '
            f'batch: item {poison.index}\n') in _log_of(tmp_path)
    # one step skipped, named once; the others went through without a word
    log = _log_of(tmp_path)
    assert log.count('non-finite latents') == 1 and 'inputs are finite' not in log


def test_a_corrupt_item_of_a_packed_store_is_named(repo_root, tmp_path):
    """A store item with NaN latents (a broken VAE encode) is named by its index and
    its shard file and row; the model never sees ``sample_idx`` (its forward takes
    the batch's keys as arguments). Without the guard the items' index reaches the
    model, which ignores it."""
    import numpy as np

    from mmsora.datasets import LatentStoreWriter
    root = str(tmp_path / 'store')
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((16, 1, 2, 3, 8, 8)).astype(np.float32) * 0.1
    latents[:, :, 1] = 0.01  # std
    writer = LatentStoreWriter(root, 16, (3, 8, 8), dtype='float32', shard_size=4)
    for k in range(4):
        writer.write_shard(k, latents[4 * k:4 * k + 4], [0, 1, 2, 3])
    writer.finalize()
    # item 5: shard 1 (items 4-7), row 1, spoilt on disk (the writer refuses NaN)
    spoilt = np.load(osp.join(root, 'shard_00001.npy'), mmap_mode='r+')
    spoilt[1, 0, 0, 1, 2, 3] = np.nan
    spoilt.flush()
    del spoilt
    cfg = tiny_cfg(repo_root, tmp_path / 'work', 2)
    cfg.train_dataloader.dataset = dict(type='PackedLatentDataset', data_root=root,
                                        sample_posterior=False, random_flip=False)
    runner = Runner.from_cfg(cfg)
    runner.train()  # one epoch of 16 items: item 5 is in one of the two batches
    guard = [h for h in runner.hooks if isinstance(h, LossGuardHook)][0]
    assert guard.num_skipped == 1
    shard = osp.join(root, 'shard_00001.npy')
    assert (f'skipping this optimizer step (1 in a row, 1 in all; the run stops after 5 '
            f'in a row); non-finite latents in the batch: item 5 ({shard} row 1)\n'
            ) in _log_of(tmp_path / 'work')
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    # the guard off: sample_idx reaches the model's forward, which ignores it
    cfg = tiny_cfg(repo_root, tmp_path / 'off', 1, 'default_hooks.loss_guard=None')
    Runner.from_cfg(cfg).train()


def _guarded(max_consecutive=5):
    from mmengine.optim import OptimWrapper
    param = torch.nn.Parameter(torch.ones(2))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=0.1))
    runner = _FakeRunner(wrapper)
    runner.logger = LineLogger()
    guard = LossGuardHook(max_consecutive=max_consecutive)
    guard.before_train(runner)
    return guard, runner, wrapper, param


def _batch(indices, bad=(), field='latents'):
    """A collated batch of items with these dataset ``indices`` (a number: that many
    items without ``sample_idx``), with an inf in ``field`` of the items at ``bad``."""
    n = indices if isinstance(indices, int) else len(indices)
    latents, text = torch.zeros(n, 2, 2), torch.zeros(n, 3, 4)
    for pos in bad:
        (latents if field == 'latents' else text)[pos, 1, 1] = float('inf')
    batch = dict(latents=latents, text_embeds=text, labels=torch.zeros(n).long())
    if not isinstance(indices, int):
        batch['sample_idx'] = torch.tensor(indices)
    return batch


def test_each_rank_names_its_own_items_and_says_so_where_it_is_seen():
    """Under DDP each rank knows its own batch only: rank 1 names its items, and says
    so at the level that reaches the console of a rank other than 0."""
    from unittest import mock
    guard, runner, wrapper, param = _guarded(max_consecutive=3)
    batch = _batch([40, 41, 42, 43], bad=[2], field='text_embeds')
    guard.before_train_iter(runner, 0, batch)
    assert 'sample_idx' not in batch  # taken out before the model sees the batch
    with mock.patch('mmsora.engine.hooks.loss_guard_hook.get_dist_info',
                    return_value=(1, 2)):
        wrapper.update_params((param * float('nan')).sum())
    assert runner.logger.lines == [(
        'error', 'iteration 1: loss nan, gradient norm nan; skipping this optimizer step '
        "(1 in a row, 1 in all; the run stops after 3 in a row); non-finite text_embeds "
        "in rank 1's batch: item 42")]
    # rank 0 of the same step: its loss was finite, its gradient (averaged) is not
    guard, runner, wrapper, param = _guarded()
    for indices, said in (([1, 2], "rank 0's batch: items 1, 2 (its loss was finite)"),
                          (3, "rank 0's loss was finite")):
        guard.before_train_iter(runner, 0, _batch(indices))
        wrapper.backward(param.sum())
        param.grad = torch.tensor([float('nan'), 0.0])
        with mock.patch('mmsora.engine.hooks.loss_guard_hook.get_dist_info',
                        return_value=(0, 2)):
            wrapper.step()
        wrapper.zero_grad()
        assert runner.logger.lines[-1] == ('warning', 'iteration 1: loss 2.0, gradient norm '
                                           'nan; skipping this optimizer step ('
                                           f'{len(runner.logger.lines)} in a row, '
                                           f'{len(runner.logger.lines)} in all; the run stops '
                                           f'after 5 in a row); {said}')


def test_an_accumulated_step_names_the_micro_batch_items_and_caps_the_list():
    guard, runner, wrapper, param = _guarded()
    # micro-batch 1 finite, micro-batch 2 with infs at positions 0 and 3: positions 4
    # and 7 of the step's 8 items, dataset items 10 and 13
    guard.before_train_iter(runner, 0, _batch([20, 21, 22, 23]))
    wrapper.backward(param.sum())
    guard.before_train_iter(runner, 1, _batch([10, 11, 12, 13], bad=[0, 3]))
    wrapper.backward((param * float('inf')).sum())
    wrapper.step()
    wrapper.zero_grad()
    assert runner.logger.lines[-1][1].endswith(
        'non-finite latents in the batch: item 10, item 13')
    # without indices: the positions in the step's 8 items
    guard.before_train_iter(runner, 0, _batch(4))
    wrapper.backward(param.sum())
    guard.before_train_iter(runner, 1, _batch(4, bad=[0, 3]))
    wrapper.backward((param * float('inf')).sum())
    wrapper.step()
    wrapper.zero_grad()
    assert runner.logger.lines[-1][1].endswith(
        'non-finite latents in the batch of 8 at position 4, position 7 (its items carry '
        'no sample_idx to name them by)')
    # a gradient that is not finite with a finite loss: the items, unchecked
    guard.before_train_iter(runner, 2, _batch(list(range(100, 120))))
    wrapper.backward(param.sum())
    param.grad = torch.tensor([float('nan'), 0.0])
    wrapper.step()
    wrapper.zero_grad()
    assert runner.logger.lines[-1][1].endswith(
        '; the batch: items 100, 101, 102, 103, 104, 105, 106, 107 ... (20 in all)')
    # a non-finite loss from finite inputs: said so (the data is not the cause)
    guard.before_train_iter(runner, 3, _batch([7, 8]))
    wrapper.update_params((param * float('nan')).sum())
    assert runner.logger.lines[-1][1].endswith(
        '; the batch: items 7, 8 (their inputs are finite)')
    assert guard.num_skipped == 4 and len(runner.logger.lines) == 4


def test_the_stop_names_the_items_of_its_last_step(tmp_path):
    guard, runner, wrapper, param = _guarded(max_consecutive=3)
    runner.work_dir = str(tmp_path)
    for i in range(3):
        runner.iter = i
        guard.before_train_iter(runner, i, _batch(4, bad=[1, 2] if i == 2 else []))
        if i < 2:
            wrapper.update_params((param * float('nan')).sum())
    with pytest.raises(NonFiniteLossError) as info:
        wrapper.update_params((param * float('nan')).sum())
    assert explain_error(info.value) == (
        'the loss or gradient was not finite in 3 iterations in a row (1 to 3; at 3: loss '
        'nan, gradient norm nan; non-finite latents in the batch of 4 at position 1, '
        'position 2 (its items carry no sample_idx to name them by)); stopping. Check the '
        'data and the learning rate, then start again (no checkpoint was saved yet)')

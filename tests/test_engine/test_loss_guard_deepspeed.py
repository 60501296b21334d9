"""LossGuardHook under DeepSpeed (tools/train.py --deepspeed deepspeed_zero2 on CPU,
gloo): a batch holding a NaN latent gives a NaN loss, and that micro-batch is kept
out of the weights on every process, before DeepSpeed's backward (with gradient
accumulation under ZeRO 1-2, as a loss of zero, so that the steps stay on the
Runner's grid); its item is named, the run goes on, and K such micro-batches in a row
stop it. Before, every
DeepSpeed run warned that its steps were not guarded."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip('deepspeed')

from tests.launch import RUN, free_port, fresh_run_env  # noqa: E402
from tests.tiny_models import TINY_DEMO_OPTIONS  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')

# Imported by the run's config (custom_imports) from the test's folder, in each process
# the launcher starts; kept out of the pytest process's registry.
PROBE = '''
import json, os, os.path as osp
import torch
from mmengine.hooks import Hook
from mmsora.registry import HOOKS


@HOOKS.register_module()
class NaNLatentsAt(Hook):
    """Put a NaN into the latents of the first item of this process's batch at
    iterations ``at`` (1-based) on processes ``ranks``; write, after each iteration,
    whether it changed the weights, the poisoned items' dataset indices and the
    weights (WORK_DIR/probe.RANK.json, weights.RANK.pt)."""
    priority = 'VERY_HIGH'  # after LossGuardHook (HIGHEST) took sample_idx out

    def __init__(self, at, ranks=(0,), zero_at=(), tensor_backward=True):
        self.at, self.ranks, self.zero_at = set(at), set(ranks), set(zero_at)
        self.tensor_backward = tensor_backward
        self.rank = int(os.environ.get('RANK', 0))
        self.changed, self.poisoned, self.micro_steps = {}, {}, {}

    def before_train(self, runner):
        """At iterations ``zero_at`` the loss is multiplied by 0 before the backward
        (outside LossGuardHook's, which sees a finite loss of 0): the reference the
        guard's stand-in for a NaN micro-batch must match."""
        wrapper = runner.optim_wrapper
        backward = wrapper.backward
        # (as DeepSpeed sets it where torch lacks the internals it needs to take a
        # torch-style loss.backward(): its prologue then runs inside engine.backward)
        engine = wrapper.model.model  # (mmengine's MMDeepSpeedEngineWrapper's engine)
        engine._support_torch_style_backward = self.tensor_backward

        def backward_zeroed(loss, **kwargs):
            if runner.iter + 1 in self.zero_at:
                loss = loss * 0
            return backward(loss, **kwargs)

        wrapper.backward = backward_zeroed

    def weights(self, runner):
        model = runner.model
        while hasattr(model, 'module'):  # mmengine's wrapper, DeepSpeed's engine
            model = model.module
        return {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.before = self.weights(runner)
        if runner.iter + 1 in self.at and self.rank in self.ranks:
            guard = next(h for h in runner.hooks if type(h).__name__ == 'LossGuardHook')
            self.poisoned[runner.iter + 1] = guard._batch_indices[0]
            data_batch['latents'][0].view(-1)[5] = float('nan')
        self.dump(runner)  # (a stop raises before after_train_iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        after = self.weights(runner)
        self.changed[runner.iter + 1] = any(not torch.equal(v, after[k])
                                            for k, v in self.before.items())
        engine = runner.optim_wrapper.model
        self.micro_steps[runner.iter + 1] = [engine.micro_steps, engine.global_steps]
        torch.save(after, osp.join(runner.work_dir, f'weights.{self.rank}.pt'))
        self.dump(runner)

    def dump(self, runner):
        with open(osp.join(runner.work_dir, f'probe.{self.rank}.json'), 'w') as f:
            json.dump(dict(changed=self.changed, poisoned=self.poisoned,
                           micro_steps=self.micro_steps), f)
'''


def run(tmp_path, at, ranks=(0,), processes=1, iters=3, options=(), flags=(),
        zero_at=(), preset='deepspeed_zero2', tensor_backward=True):
    """tools/train.py --deepspeed PRESET of the shrunk demo with latents poisoned at
    iterations ``at`` of processes ``ranks`` (the loss multiplied by 0 at ``zero_at``).
    Returns the process, its output, and each rank's probe record and final
    weights."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / 'nan_probe.py').write_text(PROBE)
    config = tmp_path / 'poisoned.py'
    config.write_text(
        f"_base_ = [{DEMO!r}]\ncustom_imports = dict(imports=['nan_probe'], "
        "allow_failed_imports=False)\ncustom_hooks = [dict(type='EMAHook', momentum=0.01,"
        " update_buffers=True, priority='ABOVE_NORMAL'), dict(type='RNGStateHook'), "
        "dict(type='NaNLatentsAt', "
        f"at={list(at)}, ranks={list(ranks)}, zero_at={list(zero_at)}, "
        f"tensor_backward={tensor_backward})]\n")
    work = tmp_path / 'run'
    cmd = [sys.executable, '-c', RUN, osp.join(ROOT, 'tools/train.py'), str(config),
           '--deepspeed', preset, '--work-dir', str(work), *flags,
           '--cfg-options', *TINY_DEMO_OPTIONS, f'train_cfg.max_iters={iters}',
           'default_hooks.checkpoint.interval=100',
           'default_hooks.checkpoint.save_last=False', 'train_dataloader.num_workers=0',
           *options]
    if processes > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
               str(processes), '--master_port', str(free_port()), '--no-python', *cmd,
               '--launcher', 'pytorch']
    env = fresh_run_env(PYTHONPATH=f'{ROOT}{os.pathsep}{tmp_path}')
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    probes = [json.loads((work / f'probe.{r}.json').read_text())
              for r in range(processes)]
    weights = [torch.load(work / f'weights.{r}.pt', weights_only=True)
               for r in range(processes)]
    return proc, out, probes, weights


def test_a_nan_latent_is_kept_out_of_its_step_the_grid_holds_and_k_in_a_row_stop(
        tmp_path):
    """One ZeRO-2 process, 2 micro-batches per step: the NaN batch of iteration 2 is
    named and kept out of the step, which still comes at iteration 2 (DeepSpeed's
    micro-step count stays on the Runner's 2-iteration grid) with iteration 1's
    micro-batch; iterations 5 and 6, both NaN, make a step with no finite micro-batch:
    skipped whole (the weights do not move at 6); 7, NaN too, stops the run at
    max_consecutive=3 in one line. Before, a skipped micro-batch moved every later step
    one iteration off the grid (a step at 3, none at 2 or 4); without the guard
    DeepSpeed's own overflow check threw away the whole step (iterations 1-2), the log
    showed ``loss: nan``, the run never stopped and every run warned 'not guarded'."""
    proc, out, [probe], [weights] = run(
        tmp_path, at=(2, 5, 6, 7), iters=10, options=[
            'default_hooks.loss_guard.max_consecutive=3',
            'optim_wrapper.accumulative_counts=2'])
    assert proc.returncode != 0, out[-3000:]
    assert 'not guarded' not in out, out[-3000:]
    assert probe['changed'] == {'1': False, '2': True, '3': False, '4': True,
                                '5': False, '6': False}, out[-3000:]
    assert probe['micro_steps'] == {str(i): [i, i // 2] for i in range(1, 7)}, \
        out[-3000:]
    assert ('iteration 2: loss nan; skipping this micro-batch (the step takes the others '
            'of its window) (1 in a row, 1 in all; the run stops after 3 in a row); '
            f"non-finite latents in the batch: item {probe['poisoned']['2']}\n") in out, \
        out[-3000:]
    assert ('iteration 6: loss nan; skipping this optimizer step (none of its 2 '
            'micro-batches was finite) (2 in a row, 3 in all;') in out, out[-3000:]
    assert ('error: the loss or gradient was not finite in 3 iterations in a row (5 to '
            '7; at 7: loss nan; non-finite latents in the batch: item '
            f"{probe['poisoned']['7']}); stopping. Check the data and the learning rate, "
            'then start again (no checkpoint was saved yet)') in out, out[-3000:]
    assert 'Iter(train) [ 6/10]' in out and 'Iter(train) [ 8/10]' not in out
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize('preset,tensor_backward', [
    ('deepspeed_zero1', True), ('deepspeed_zero2', True), ('deepspeed_zero1', False)])
def test_a_nan_micro_batch_weighs_as_a_loss_of_zero(tmp_path, preset, tensor_backward):
    """ZeRO-1 (which reduces the gradient at a step's last micro-batch only) and ZeRO-2
    (at every micro-batch), 2 micro-batches per step, NaN latents at iteration 1 (a
    step's first micro-batch) and 4 (its last): the weights come out equal to those of
    a run whose loss is multiplied by 0 at 1 and 4 (same data, same noise), and each
    step moved the weights at its last iteration. Also where the engine takes no
    torch-style backward (an older torch): DeepSpeed's prologue, called by hand before
    the stand-in's backward, raised there."""
    options = ['optim_wrapper.accumulative_counts=2']
    proc, out, [probe], [weights] = run(tmp_path / 'nan', at=(1, 4), iters=4,
                                        options=options, preset=preset,
                                        tensor_backward=tensor_backward)
    assert proc.returncode == 0, out[-3000:]
    _, ref_out, [ref_probe], [ref] = run(tmp_path / 'zero', at=(), zero_at=(1, 4),
                                         iters=4, options=options, preset=preset,
                                         tensor_backward=tensor_backward)
    assert probe['changed'] == ref_probe['changed'] == {
        '1': False, '2': True, '3': False, '4': True}, out[-3000:] + ref_out[-3000:]
    assert weights.keys() == ref.keys()
    for key, value in weights.items():
        assert torch.allclose(value, ref[key], rtol=1e-6, atol=1e-7), key


def test_zero3_skips_the_micro_batch_off_the_grid(tmp_path):
    """ZeRO-3 (weights partitioned outside the forward: no stand-in backward reaches
    them) skips the NaN micro-batch's backward and step: the step goes on with the
    next micro-batch, one iteration off the grid, as the docs say."""
    proc, out, [probe], _ = run(tmp_path, at=(2,), iters=4, preset='deepspeed_zero3',
                                options=['optim_wrapper.accumulative_counts=2'])
    assert proc.returncode == 0, out[-3000:]
    # [micro_steps, global_steps] after each iteration (the weights are partitions)
    assert probe['micro_steps'] == {'1': [1, 0], '2': [1, 0], '3': [2, 1],
                                    '4': [3, 1]}, out[-3000:]
    assert ('iteration 2: loss nan; skipping this micro-batch (its backward and step) '
            '(1 in a row,') in out, out[-3000:]


def test_a_nan_on_one_process_skips_the_step_on_both(tmp_path):
    """Two ZeRO-2 processes in bf16 (--amp), only rank 1's batch bad at iteration 2:
    both skip it (one all-reduce of the flag before the backward), and both train the
    others, with the same weights; rank 1 names its item (an error-level line: the
    console of a process other than 0 shows no warnings), rank 0 says its loss was
    finite."""
    proc, out, probes, weights = run(tmp_path, at=(2,), ranks=(1,), processes=2,
                                     flags=['--amp'])
    assert proc.returncode == 0, out[-3000:]
    assert 'not guarded' not in out and 'OVERFLOW' not in out
    assert 'Iter(train) [3/3]' in out
    for probe in probes:
        assert probe['changed'] == {'1': True, '2': False, '3': True}, out[-3000:]
    assert ('iteration 2: loss nan (not finite on 1 of 2 processes); skipping this '
            'optimizer step (1 in a row, 1 in all; the run stops after 5 in a row); '
            f"non-finite latents in rank 1's batch: item {probes[1]['poisoned']['2']}\n"
            ) in out, out[-3000:]
    assert re.search(r'iteration 2: loss [0-9.]+ \(finite here; not finite on 1 of 2 '
                     r'processes\); '
                     r'skipping this optimizer step .*; rank 0\'s batch: items [0-9, ]+ '
                     r'\(its loss was finite\)\n', out), out[-3000:]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
        assert torch.isfinite(value).all(), key


@pytest.mark.parametrize('flags,options', [
    (['--amp'], ['strategy.config.bf16.check_grad_overflow=False']),
    ([], ['strategy.config.zero_optimization.compute_grad_norm=False',
          'optim_wrapper.clip_grad=None'])], ids=['bf16_unchecked', 'fp32_no_norm'])
def test_without_a_gradient_check_a_window_of_nan_waits_for_a_finite_micro_batch(
        tmp_path, flags, options):
    """DeepSpeed's check of the gradient turned off: bf16 with
    ``bf16.check_grad_overflow=False``, or fp32 (checked through its gradient norm)
    with ``zero_optimization.compute_grad_norm=False`` (no clipping): a NaN stand-in
    would go into the weights (and AdamW's state), so a window's last micro-batch with
    none finite before it is skipped (backward and step) and the step comes with the
    next finite one, one iteration late."""
    proc, out, [probe], [weights] = run(
        tmp_path, at=(1, 2), iters=4, flags=flags, options=[
            'optim_wrapper.accumulative_counts=2', *options])
    assert proc.returncode == 0, out[-3000:]
    assert probe['changed'] == {'1': False, '2': False, '3': True, '4': False}, \
        out[-3000:]
    assert probe['micro_steps'] == {'1': [1, 0], '2': [1, 0], '3': [2, 1],
                                    '4': [3, 1]}, out[-3000:]
    assert ('iteration 1: loss nan; skipping this micro-batch (the step takes the others '
            'of its window)') in out, out[-3000:]
    assert ('iteration 2: loss nan; skipping this micro-batch (its backward and step)'
            ) in out, out[-3000:]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_zero_loss_gives_each_trainable_weight_a_zero_gradient():
    from mmsora.engine.hooks.loss_guard_hook import zero_loss
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).to(
        torch.bfloat16)
    model[1].bias.requires_grad_(False)
    loss = zero_loss(model)
    assert loss.item() == 0.0
    loss.backward()
    for name, p in model.named_parameters():
        if name == '1.bias':
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.shape == p.shape, name
            assert torch.count_nonzero(p.grad) == 0, name
    model.zero_grad(set_to_none=True)
    zero_loss(model, float('nan')).backward()
    assert all(torch.isnan(p.grad).any() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('stage,dtype,check,norm,expected', [
    (1, torch.float32, False, True, True), (1, torch.float32, False, False, False),
    (2, torch.float16, True, False, True), (2, torch.bfloat16, True, True, True),
    (2, torch.bfloat16, False, True, False), (3, torch.float32, True, True, False),
    (0, torch.float32, True, True, False), (2, torch.float32, None, True, False)])
def test_overflow_checked(stage, dtype, check, norm, expected):
    """Whether DeepSpeed's optimizer skips a step with a NaN gradient: ZeRO 1-2's with
    check_grad_overflow (fp16; bf16 by default), or in fp32 through the gradient norm
    (compute_grad_norm), not ZeRO-0's or ZeRO-3's here, nor an optimizer without that
    attribute (another DeepSpeed)."""
    from types import SimpleNamespace
    from mmsora.engine.hooks.loss_guard_hook import overflow_checked
    optimizer = SimpleNamespace(dtype=dtype, compute_grad_norm=norm)
    if check is not None:
        optimizer.check_grad_overflow = check
    engine = SimpleNamespace(zero_optimization_stage=lambda: stage, optimizer=optimizer)
    assert overflow_checked(engine) is expected

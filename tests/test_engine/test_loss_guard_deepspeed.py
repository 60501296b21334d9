"""LossGuardHook under DeepSpeed (tools/train.py --deepspeed deepspeed_zero2 on CPU,
gloo): a batch holding a NaN latent gives a NaN loss, and that micro-batch's backward
and step are skipped on every process, before DeepSpeed's backward; its item is
named, the run goes on, and K such micro-batches in a row stop it. Before, every
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

    def __init__(self, at, ranks=(0,)):
        self.at, self.ranks = set(at), set(ranks)
        self.rank = int(os.environ.get('RANK', 0))
        self.changed, self.poisoned = {}, {}

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
        torch.save(after, osp.join(runner.work_dir, f'weights.{self.rank}.pt'))
        self.dump(runner)

    def dump(self, runner):
        with open(osp.join(runner.work_dir, f'probe.{self.rank}.json'), 'w') as f:
            json.dump(dict(changed=self.changed, poisoned=self.poisoned), f)
'''


def run(tmp_path, at, ranks=(0,), processes=1, iters=3, options=(), flags=()):
    """tools/train.py --deepspeed deepspeed_zero2 of the shrunk demo with latents
    poisoned at iterations ``at`` of processes ``ranks``. Returns the process, its
    output, and each rank's probe record and final weights."""
    (tmp_path / 'nan_probe.py').write_text(PROBE)
    config = tmp_path / 'poisoned.py'
    config.write_text(
        f"_base_ = [{DEMO!r}]\ncustom_imports = dict(imports=['nan_probe'], "
        "allow_failed_imports=False)\ncustom_hooks = [dict(type='EMAHook', momentum=0.01,"
        " update_buffers=True, priority='ABOVE_NORMAL'), dict(type='RNGStateHook'), "
        "dict(type='NaNLatentsAt', "
        f"at={list(at)}, ranks={list(ranks)})]\n")
    work = tmp_path / 'run'
    cmd = [sys.executable, '-c', RUN, osp.join(ROOT, 'tools/train.py'), str(config),
           '--deepspeed', 'deepspeed_zero2', '--work-dir', str(work), *flags,
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


def test_a_nan_latent_skips_its_micro_batch_names_the_item_and_k_in_a_row_stop(tmp_path):
    """One ZeRO-2 process, 2 micro-batches per step: the NaN batch of iteration 2 is
    skipped (no backward, no step) and named; the step goes on with iteration 3's
    micro-batch (it moves the weights there, not at 2 or 4); iterations 5 and 6, NaN
    too, stop the run at max_consecutive=2 in one line. Without the guard DeepSpeed's
    own overflow check threw away the whole step (iterations 1-2), the log showed
    ``loss: nan``, the run never stopped and every run warned 'not guarded'."""
    proc, out, [probe], [weights] = run(
        tmp_path, at=(2, 5, 6), iters=8, options=[
            'default_hooks.loss_guard.max_consecutive=2',
            'optim_wrapper.accumulative_counts=2'])
    assert proc.returncode != 0, out[-3000:]
    assert 'not guarded' not in out and 'OVERFLOW' not in out
    assert probe['changed'] == {'1': False, '2': False, '3': True, '4': False,
                                '5': False}, out[-3000:]
    assert ('iteration 2: loss nan; skipping this micro-batch (its backward and step) (1 '
            'in a row, 1 in all; the run stops after 2 in a row); non-finite latents in '
            f"the batch: item {probe['poisoned']['2']}\n") in out, out[-3000:]
    assert ('error: the loss or gradient was not finite in 2 iterations in a row (5 to '
            '6; at 6: loss nan; non-finite latents in the batch: item '
            f"{probe['poisoned']['6']}); stopping. Check the data and the learning rate, "
            'then start again (no checkpoint was saved yet)') in out, out[-3000:]
    assert 'Iter(train) [4/8]' in out and 'Iter(train) [6/8]' not in out
    assert all(torch.isfinite(v).all() for v in weights.values())


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

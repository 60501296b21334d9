"""Speed switches: ``--compile`` compiles the denoiser in place (same outputs, gradients
and state-dict keys), fused AdamW on CUDA through the config, TF32 switch, glibc's
malloc keeping freed memory on the CPU."""
import os
import os.path as osp
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger

from mmsora.engine.strategies import (CompileDenoiserHook, apply_speed_options,
                                      keep_freed_cpu_memory,
                                      prefer_fused_optimizer, set_tf32)
from mmsora.models import DiT
from mmsora.registry import HOOKS
from tools import train

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
            num_heads=2, num_classes=10)


def forward_backward(denoiser):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    denoiser.train()
    torch.manual_seed(0)
    out = denoiser(x, torch.tensor([3, 700]), torch.tensor([1, 7]))
    out.pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in denoiser.named_parameters()
                          if p.grad is not None}


@pytest.mark.parametrize('checkpointing', [False, 'selective'])
def test_compile_hook_compiles_the_denoiser_in_place(checkpointing):
    torch.manual_seed(0)
    model = SimpleNamespace(denoiser=DiT(**TINY, grad_checkpointing=checkpointing))
    with torch.no_grad():  # random everywhere (adaLN-Zero starts at zero)
        for p in model.denoiser.parameters():
            p.normal_(0, 0.1)
    ref = DiT(**TINY)
    ref.load_state_dict(model.denoiser.state_dict())
    keys = list(model.denoiser.state_dict())
    # aot_eager traces forward and backward through dynamo and AOTAutograd, as
    # inductor does, without generating C++ (the CPU test would take minutes).
    hook = HOOKS.build(dict(type='CompileDenoiserHook', backend='aot_eager'))
    assert isinstance(hook, CompileDenoiserHook)
    hook.before_train(SimpleNamespace(model=model, logger=MMLogger.get_current_instance()))
    assert model.denoiser._compiled_call_impl is not None
    assert list(model.denoiser.state_dict()) == keys  # no '_orig_mod.' prefix
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    out, grads = forward_backward(model.denoiser)
    assert counts['stats']['unique_graphs'] >= 1  # it really went through dynamo
    out_ref, grads_ref = forward_backward(ref)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys() and len(grads) > 10
    assert grads_ref['blocks.0.attn.qkv.weight'].abs().sum() > 0
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-5, rtol=1e-4)


def test_compile_flag_adds_the_hook_once(tmp_path):
    cfg = train.build_train_config(train.parse_args([DEMO, '--compile', '--work-dir',
                                                     str(tmp_path)]))
    assert [h['type'] for h in cfg.custom_hooks].count('CompileDenoiserHook') == 1
    apply_speed_options(cfg, compile=True)
    assert [h['type'] for h in cfg.custom_hooks].count('CompileDenoiserHook') == 1
    plain = train.build_train_config(train.parse_args([DEMO, '--work-dir', str(tmp_path)]))
    assert 'CompileDenoiserHook' not in [h['type'] for h in plain.custom_hooks]


@pytest.mark.parametrize('optimizer,device,fused', [
    (dict(type='AdamW', lr=1e-4), 'cuda', True),
    (dict(type='Adam', lr=1e-4), 'cuda', True),
    (dict(type='AdamW', lr=1e-4, fused=False), 'cuda', False),
    (dict(type='AdamW', lr=1e-4, foreach=True), 'cuda', None),
    (dict(type='SGD', lr=1e-4), 'cuda', None),
    (dict(type='AdamW', lr=1e-4), 'cpu', None)])
def test_fused_adamw_on_cuda_unless_the_config_says_otherwise(optimizer, device, fused):
    assert prefer_fused_optimizer(dict(optimizer), device).get('fused') == fused


def test_fused_adamw_from_the_config_steps_like_the_plain_one():
    from mmengine.optim import build_optim_wrapper
    steps = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = DiT(**TINY)
        cfg = dict(optimizer=dict(type='AdamW', lr=1e-2, fused=fused))
        wrapper = build_optim_wrapper(model, cfg)
        assert wrapper.optimizer.defaults['fused'] is fused
        for step in range(2):
            torch.manual_seed(step)  # the same labels dropped in both runs
            x = torch.randn(2, 4, 8, 8)
            loss = (model(x, torch.tensor([3, 700]), torch.tensor([1, 7])) - 1).pow(2).mean()
            wrapper.update_params(loss)
        steps.append(model.state_dict())
    assert not torch.equal(steps[0]['final_layer.linear.weight'],
                           torch.zeros_like(steps[0]['final_layer.linear.weight']))
    for name in steps[0]:
        torch.testing.assert_close(steps[0][name], steps[1][name], atol=1e-6, rtol=1e-5)


def test_tf32_switch():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)
        assert torch.get_float32_matmul_precision() == 'high'
        assert torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert torch.get_float32_matmul_precision() == 'highest'
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


# A CPU training step's allocations in small: 12 MiB blocks and one 48 MiB block (DiT-S/2
# at batch 32 makes both sizes), freed at the end of the step.
MALLOC_STEPS = '''
import resource, sys, torch
from mmsora.engine.strategies import keep_freed_cpu_memory
kept = keep_freed_cpu_memory() if sys.argv[1] == 'kept' else None
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(3 << 20) for _ in range(8)] + [torch.ones(12 << 20)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, max(faults[4:]))  # the heap has settled by the fourth
'''


def malloc_steps(mode: str) -> tuple:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
    env['PYTHONPATH'] = ROOT
    out = subprocess.run([sys.executable, '-c', MALLOC_STEPS, mode], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    out = out.splitlines()[-1].split()  # after DeepSpeed's import-time lines
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc on Linux')
def test_kept_freed_memory_is_reused_without_fresh_pages():
    # Its own processes: the setting is process-wide and cannot be undone.
    _, default = malloc_steps('default')
    if default < 10000:  # the 48 MiB block alone is 12288 pages of 4 KiB
        pytest.skip(f'{default} page faults per step by default: huge pages here')
    kept, faults = malloc_steps('kept')
    assert kept == 'True'
    assert faults < default / 20, (faults, default)


def test_a_tuned_malloc_is_left_as_the_environment_sets_it(monkeypatch):
    monkeypatch.setenv('MALLOC_TRIM_THRESHOLD_', '1048576')
    assert keep_freed_cpu_memory() is False
    monkeypatch.delenv('MALLOC_TRIM_THRESHOLD_')
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.mmap_threshold=65536')
    assert keep_freed_cpu_memory() is False

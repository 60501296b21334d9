"""Attention backends: which kernel a call picks, and that the flash-attn / xformers
paths hand the packages the layout they document and give SDPA's result.

Neither package installs on this CPU-only machine (both need CUDA), so stand-ins
with the packages' documented signatures ((N, T, H, Dh) in and out) are put in
sys.modules; they compute with plain matrix products and record what they were
given. The real kernels are for a GPU session (docs/benchmarks.md)."""
import sys
import types

import pytest
import torch

from mmsora.models import LatentDiffusion
from mmsora.models.layers import Attention, MultiHeadCrossAttention, attention_backends
from mmsora.models.layers.attention_backends import attention, resolve_backend


def reference(q, k, v):
    """Softmax attention on (N, T, H, Dh), by hand."""
    scores = torch.einsum('nthd,nlhd->nhtl', q, k) / q.shape[-1] ** 0.5
    return torch.einsum('nhtl,nlhd->nthd', scores.softmax(-1), v)


@pytest.fixture
def fake_packages(monkeypatch):
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append(('flash_attn', q.shape, q.stride(-1), dropout_p))
        return reference(q, k, v)

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        calls.append(('xformers', query.shape, query.stride(-1), p))
        return reference(query, key, value)

    flash = types.ModuleType('flash_attn')
    flash.flash_attn_func = flash_attn_func
    xformers = types.ModuleType('xformers')
    xops = types.ModuleType('xformers.ops')
    xops.memory_efficient_attention = memory_efficient_attention
    xformers.ops = xops
    for name, module in (('flash_attn', flash), ('xformers', xformers),
                         ('xformers.ops', xops)):
        monkeypatch.setitem(sys.modules, name, module)
    installed = {'flash_attn': True, 'xformers.ops': True, 'flash_attn_interface': False}
    monkeypatch.setattr(attention_backends, '_installed', lambda name: installed[name])
    return calls


def test_auto_is_sdpa_without_packages_and_on_cpu(monkeypatch):
    monkeypatch.setattr(attention_backends, '_installed', lambda name: False)
    assert attention_backends.installed_backends() == ['sdpa']
    for device in ('cpu', 'cuda'):
        assert resolve_backend('auto', device, torch.bfloat16, 64, False, 0.0) == 'sdpa'
    with pytest.raises(ValueError, match='flash-attn is not installed'):
        resolve_backend('flash_attn', 'cuda', torch.bfloat16, 64, False, 0.0)
    with pytest.raises(ValueError, match='xformers is not installed'):
        resolve_backend('xformers', 'cuda', torch.bfloat16, 64, False, 0.0)
    # refused when the model is given it, not at its first forward (one line)
    with pytest.raises(ValueError, match="attention backend 'xformers' asked for, but "
                                         'xformers is not installed'):
        attention_backends.set_attention_backend(torch.nn.Linear(2, 2), 'xformers')
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        resolve_backend('flash', 'cuda', torch.bfloat16, 64, False, 0.0)


def test_auto_picks_what_suits_the_call(fake_packages):
    pick = resolve_backend
    assert pick('auto', 'cuda', torch.bfloat16, 72, False, 0.0) == 'flash_attn'
    assert pick('auto', 'cuda', torch.float16, 256, False, 0.1) == 'flash_attn'
    assert pick('auto', 'cuda', torch.float32, 72, False, 0.0) == 'xformers'  # fp32
    assert pick('auto', 'cuda', torch.bfloat16, 512, False, 0.0) == 'xformers'  # head
    assert pick('auto', 'cuda', torch.bfloat16, 72, True, 0.0) == 'sdpa'  # masked
    assert pick('auto', 'cpu', torch.bfloat16, 72, False, 0.0) == 'sdpa'
    assert pick('xformers', 'cuda', torch.bfloat16, 72, True, 0.0) == 'sdpa'  # masked
    assert pick('sdpa', 'cuda', torch.bfloat16, 72, False, 0.0) == 'sdpa'


def test_flash_attention_3_on_hopper_without_dropout_else_2(fake_packages, monkeypatch):
    installed = {'flash_attn': True, 'xformers.ops': True, 'flash_attn_interface': True}
    monkeypatch.setattr(attention_backends, '_installed', lambda name: installed[name])
    fa3 = types.ModuleType('flash_attn_interface')

    def fa3_func(q, k, v):
        fake_packages.append(('fa3', q.shape, q.stride(-1), 0.0))
        return reference(q, k, v), None  # some versions return (out, lse)
    fa3.flash_attn_func = fa3_func
    monkeypatch.setitem(sys.modules, 'flash_attn_interface', fa3)
    monkeypatch.setattr(attention_backends, '_cuda_major', lambda: 9)  # Hopper
    pick = attention_backends._flash_module
    assert pick('cuda', 0.0) is fa3
    assert pick('cuda', 0.1) is sys.modules['flash_attn']  # FA3 has no dropout
    monkeypatch.setattr(attention_backends, '_cuda_major', lambda: 8)  # Ampere
    assert pick('cuda', 0.0) is sys.modules['flash_attn']
    q = torch.randn(2, 3, 5, 8)
    out = attention(q, q, q, backend='flash_attn')  # CPU stand-ins: FA3 first
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, q, q))
    attention(q, q, q, dropout_p=0.1, backend='flash_attn')
    assert [c[0] for c in fake_packages] == ['fa3', 'flash_attn']
    installed['flash_attn'] = False  # FA3 alone: dropout goes elsewhere
    assert resolve_backend('auto', 'cuda', torch.bfloat16, 64, False, 0.1) == 'xformers'
    with pytest.raises(RuntimeError, match='FlashAttention-3 has no attention dropout'):
        attention(q, q, q, dropout_p=0.1, backend='flash_attn')


def test_a_package_that_fails_to_import_counts_as_absent(tmp_path, monkeypatch):
    pkg = tmp_path / 'xformers'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'ops.py').write_text("raise OSError('undefined symbol: built for another torch')")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ('xformers', 'xformers.ops'):
        monkeypatch.delitem(sys.modules, name, raising=False)
    attention_backends._installed.cache_clear()
    try:
        assert 'xformers' not in attention_backends.installed_backends()
        assert resolve_backend('auto', 'cuda', torch.float32, 64, False, 0.0) == 'sdpa'
    finally:
        attention_backends._installed.cache_clear()


@pytest.mark.parametrize('backend', ['flash_attn', 'xformers'])
def test_package_paths_equal_sdpa_values_and_gradients(fake_packages, backend):
    torch.manual_seed(0)
    layer = Attention(32, num_heads=4, qkv_bias=True)
    x = torch.randn(2, 10, 32, requires_grad=True)
    ref = layer(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *layer.parameters()])
    layer.attn_backend = backend
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The package got (N, T, H, Dh) views with a contiguous last axis, no copy.
    assert fake_packages == [(backend, (2, 10, 4, 8), 1, 0.0)]


def test_masked_cross_attention_stays_on_sdpa(fake_packages):
    layer = MultiHeadCrossAttention(32, num_heads=4)
    layer.attn_backend = 'flash_attn'
    x, cond = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    layer(x, cond, mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    assert fake_packages == []
    layer(x, cond)  # no mask: the package
    assert [c[0] for c in fake_packages] == ['flash_attn']


def test_latent_diffusion_sets_every_attention_layer(fake_packages):
    model = LatentDiffusion(
        denoiser=dict(type='VideoDiT', input_size=8, num_frames=2, patch_size=2,
                      in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=4,
                      block_type='stdit'),
        latent_shape=(3, 2, 8, 8), num_classes=4, attn_backend='xformers')
    layers = [m for m in model.modules() if hasattr(m, 'attn_backend')]
    assert len(layers) == 4 and {m.attn_backend for m in layers} == {'xformers'}
    model.eval().denoiser(torch.randn(1, 3, 2, 8, 8), torch.tensor([3]), torch.tensor([1]))
    assert len(fake_packages) == 4 and {c[0] for c in fake_packages} == {'xformers'}
    with pytest.raises(ValueError, match='unknown attention backend'):
        LatentDiffusion(denoiser=dict(type='DiT', input_size=8, depth=1, hidden_size=32,
                                      num_heads=2, in_channels=3, num_classes=4),
                        latent_shape=(3, 8, 8), num_classes=4, attn_backend='flash2')

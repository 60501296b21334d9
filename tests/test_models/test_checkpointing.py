"""Activation checkpointing of every k-th block and selective checkpointing (DiT,
VideoDiT): the right blocks are recomputed, outputs and gradients equal the plain
model's, and the activations kept for the backward pass shrink in proportion to the
checkpointed blocks (selective: to the products' and attention's outputs)."""
import pytest
import torch
import torch.nn.functional as F

import mmsora.models.layers.checkpointing as checkpointing
from mmsora.models import DiT, VideoDiT
from mmsora.utils.memory_estimate import LiveTensorBytes

DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=6,
           num_heads=2, num_classes=10)
VIDEO = dict(DIT, depth=4, num_frames=3, block_type='latte')
# grad_checkpointing -> the blocks it checkpoints (depth 6); pairs, as False == 0 and
# True == 1 would be one key each in a dict
EXPECTED = [(False, []), (0, []), (True, [0, 1, 2, 3, 4, 5]), (1, [0, 1, 2, 3, 4, 5]),
            (2, [0, 2, 4]), (3, [0, 3]), (6, [0]),  # (7: refused, more than the depth)
            ('selective', [0, 1, 2, 3, 4, 5])]


def randomise(model, seed=5):
    """Random weights everywhere (DiT's init zeroes the adaLN and output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def dit_inputs():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([3, 700]),
            torch.tensor([1, 7]))


def video_inputs():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 3, 8, 8, generator=gen), torch.tensor([3, 700]),
            torch.tensor([1, 7]))


def spy_checkpoint(monkeypatch, model):
    """Record the index of every block the model's forward checkpoints, and whether
    selectively (with a ``context_fn``)."""
    seen, selective, real = [], set(), checkpointing.checkpoint
    index = {id(b): i for i, b in enumerate(model.blocks)}

    def spy(block, *args, **kwargs):
        seen.append(index[id(block)])
        selective.add(kwargs.get('context_fn') is checkpointing._SELECTIVE)
        return real(block, *args, **kwargs)
    monkeypatch.setattr(checkpointing, 'checkpoint', spy)
    return seen, selective


def loss_and_grads(model, inputs):
    model.train()
    torch.manual_seed(0)  # the same labels dropped in every run
    out = model(*inputs)
    out[:, :4].pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad}


@pytest.mark.parametrize('every, expected', EXPECTED)
def test_dit_checkpoints_every_kth_block_with_the_same_gradients(every, expected,
                                                                 monkeypatch):
    plain = randomise(DiT(**DIT))
    model = DiT(**DIT, grad_checkpointing=every)
    model.load_state_dict(plain.state_dict())
    out_ref, grads_ref = loss_and_grads(plain, dit_inputs())
    seen, selective = spy_checkpoint(monkeypatch, model)
    out, grads = loss_and_grads(model, dit_inputs())
    assert seen == expected
    assert selective == ({every == 'selective'} if seen else set())
    torch.testing.assert_close(out, out_ref, atol=1e-6, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    assert grads_ref['blocks.3.attn.qkv.weight'].abs().sum() > 0
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-6, rtol=1e-5)


def test_video_dit_checkpoints_every_second_block_with_the_same_gradients(monkeypatch):
    plain = randomise(VideoDiT(**VIDEO))
    model = VideoDiT(**VIDEO, grad_checkpointing=2)
    model.load_state_dict(plain.state_dict())
    out_ref, grads_ref = loss_and_grads(plain, video_inputs())
    seen, _ = spy_checkpoint(monkeypatch, model)
    out, grads = loss_and_grads(model, video_inputs())
    assert seen == [0, 2]  # the spatial blocks of the latte pairs
    torch.testing.assert_close(out, out_ref, atol=1e-6, rtol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-6, rtol=1e-5)


def saved_bytes(model, inputs):
    """Bytes autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(*inputs)
    return total


def test_saved_activations_shrink_with_each_checkpointed_block():
    sizes = {}
    for every in (False, 3, 2, True):
        torch.manual_seed(0)
        sizes[every] = saved_bytes(DiT(**DIT, grad_checkpointing=every), dit_inputs())
    # 0, 2, 3 and 6 of the 6 blocks checkpointed: each one saves the same amount.
    per_block = (sizes[False] - sizes[True]) / 6
    assert per_block > 0.1 * sizes[False] / 6
    for every, n in ((3, 2), (2, 3)):
        assert sizes[every] == pytest.approx(sizes[False] - n * per_block, rel=1e-6)
    # No saving without gradients (inference), where nothing is checkpointed.
    with torch.no_grad():
        assert saved_bytes(DiT(**DIT, grad_checkpointing=True), dit_inputs()) == 0


@pytest.mark.parametrize('bad', [-1, 1.5, 'yes', 'Selective'])
def test_bad_checkpointing_values_are_rejected(bad):
    with pytest.raises(ValueError, match='grad_checkpointing must be'):
        DiT(**DIT, grad_checkpointing=bad)
    with pytest.raises(ValueError, match='grad_checkpointing must be'):
        VideoDiT(**VIDEO, grad_checkpointing=bad)


def kept_bytes(model, inputs) -> int:
    """Bytes of the tensors a training forward creates and keeps for the backward (its
    output included): the storages alive after it, while its output is."""
    model.train()
    with LiveTensorBytes() as live:
        out = model(*inputs)
    assert out.grad_fn is not None
    return live.current


def test_selective_checkpointing_keeps_the_products_and_attention_only():
    n, d, tokens = 2, DIT['hidden_size'], (8 // 2) ** 2
    kept = {}
    for every in (False, 'selective', True):
        torch.manual_seed(0)
        kept[every] = kept_bytes(DiT(**DIT, grad_checkpointing=every), dit_inputs())
    # Beyond its input (which the checkpoint keeps too), per block, in (N, T, D) float32
    # activations: without checkpointing 20 (norm1's output, the modulated input, q,
    # k, v, the attention's output, its (N, T, D) copy, proj's output, the residual sum,
    # norm2's output, the modulated input, fc1's (4) and GELU's (4) outputs, fc2's
    # output); selective 10 (q, k, v, attention, proj, fc1 (4), fc2), plus the
    # attention's log-sum-exp and the adaLN's (N, 6D) output, small here and less at
    # real sizes.
    per_block = {k: (v - kept[True]) / DIT['depth'] for k, v in kept.items()}
    act = n * tokens * d * 4
    small = (n * 6 * d + n * DIT['num_heads'] * tokens) * 4
    assert per_block[False] == pytest.approx(20 * act, rel=0.03)
    assert per_block['selective'] == 10 * act + small


def test_selective_checkpointing_recomputes_dropout_with_the_same_masks():
    """Dropout fills its mask in place (so it is recomputed, not kept) and draws the
    forward's numbers again: the gradients are those of the plain forward."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 24)
    x = torch.randn(2, 5, 8, requires_grad=True)

    def block(x):
        q, k, v = proj(x).unflatten(-1, (3, 2, 4)).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), dropout_p=0.5)
        return F.dropout(y.transpose(1, 2).flatten(2).sin(), 0.5)

    grads = []
    for mode in (False, 'selective'):
        torch.manual_seed(1)
        out = checkpointing.checkpointed_call(mode, 0, block, x)
        grads.append(torch.autograd.grad(out.square().sum(), (x, proj.weight)))
    for plain, selective in zip(*grads):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(selective, plain, rtol=0, atol=0)


def test_selective_checkpointing_under_bf16_autocast_same_gradients():
    """Under autocast the recomputation casts again (weights and inputs to bf16) and
    reuses the kept bf16 products: the gradients are the plain autocast step's."""
    plain = randomise(DiT(**DIT))
    model = DiT(**DIT, grad_checkpointing='selective')
    model.load_state_dict(plain.state_dict())
    results = []
    for m in (plain, model):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            results.append(loss_and_grads(m, dit_inputs()))
    (out_ref, grads_ref), (out, grads) = results
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=0, atol=0)


@pytest.mark.parametrize('block_type', ['latte', 'stdit'])
def test_video_dit_selective_checkpointing_same_gradients(block_type):
    config = dict(VIDEO, block_type=block_type)
    if block_type == 'stdit':  # text cross-attention with a padding mask
        config.update(condition='text', text_dim=16, max_text_len=5)
    plain = randomise(VideoDiT(**config))
    model = VideoDiT(**config, grad_checkpointing='selective')
    model.load_state_dict(plain.state_dict())
    x, t, y = video_inputs()
    if block_type == 'stdit':
        y = (torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    out_ref, grads_ref = loss_and_grads(plain, (x, t, y))
    out, grads = loss_and_grads(model, (x, t, y))
    torch.testing.assert_close(out, out_ref, atol=1e-6, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-6, rtol=1e-5)


def test_attention_with_dropout_is_recomputed_not_kept():
    """An attention kernel that drops out draws random numbers: kept, it would not draw
    them again in the recomputation, and a dropout recomputed after it would draw other
    ones. So it is kept only without dropout (the argument found by name)."""
    aten, q = torch.ops.aten, torch.zeros(1, 1, 2, 4)
    policy = checkpointing._selective_policy
    must_save = torch.utils.checkpoint.CheckpointPolicy.MUST_SAVE
    flash = aten._scaled_dot_product_flash_attention_for_cpu.default
    efficient = aten._scaled_dot_product_efficient_attention.default  # dropout_p 6th
    assert policy(None, flash, q, q, q) == must_save
    assert policy(None, flash, q, q, q, 0.0) == must_save
    assert policy(None, flash, q, q, q, 0.1) != must_save
    assert policy(None, flash, q, q, q, dropout_p=0.1) != must_save
    assert policy(None, efficient, q, q, q, None, True, 0.0) == must_save
    assert policy(None, efficient, q, q, q, None, True, 0.1) != must_save
    assert policy(None, aten.addmm.default, q, q, q) == must_save
    assert policy(None, aten.gelu.default, q) != must_save

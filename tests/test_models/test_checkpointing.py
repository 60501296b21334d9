"""Activation checkpointing of every k-th block (DiT, VideoDiT): the right blocks are
recomputed, outputs and gradients equal the plain model's, and the activations kept
for the backward pass shrink in proportion to the checkpointed blocks."""
import pytest
import torch

import mmsora.models.denoisers.dit as dit_module
import mmsora.models.denoisers.video_dit as video_dit_module
from mmsora.models import DiT, VideoDiT

DIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=6,
           num_heads=2, num_classes=10)
VIDEO = dict(DIT, depth=4, num_frames=3, block_type='latte')
# grad_checkpointing -> the blocks it recomputes (depth 6)
EXPECTED = {False: [], 0: [], True: [0, 1, 2, 3, 4, 5], 1: [0, 1, 2, 3, 4, 5],
            2: [0, 2, 4], 3: [0, 3], 6: [0], 7: [0]}


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


def spy_checkpoint(monkeypatch, module, model):
    """Record the index of every block the model's forward checkpoints."""
    seen, real = [], module.checkpoint
    index = {id(b): i for i, b in enumerate(model.blocks)}

    def spy(block, *args, **kwargs):
        seen.append(index[id(block)])
        return real(block, *args, **kwargs)
    monkeypatch.setattr(module, 'checkpoint', spy)
    return seen


def loss_and_grads(model, inputs):
    model.train()
    torch.manual_seed(0)  # the same labels dropped in every run
    out = model(*inputs)
    out[:, :4].pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad}


@pytest.mark.parametrize('every', list(EXPECTED))
def test_dit_checkpoints_every_kth_block_with_the_same_gradients(every, monkeypatch):
    plain = randomise(DiT(**DIT))
    model = DiT(**DIT, grad_checkpointing=every)
    model.load_state_dict(plain.state_dict())
    out_ref, grads_ref = loss_and_grads(plain, dit_inputs())
    seen = spy_checkpoint(monkeypatch, dit_module, model)
    out, grads = loss_and_grads(model, dit_inputs())
    assert seen == EXPECTED[every]
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
    seen = spy_checkpoint(monkeypatch, video_dit_module, model)
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
    for every in (3, 2):
        n = len(EXPECTED[every])
        assert sizes[every] == pytest.approx(sizes[False] - n * per_block, rel=1e-6)
    # No saving without gradients (inference), where nothing is checkpointed.
    with torch.no_grad():
        assert saved_bytes(DiT(**DIT, grad_checkpointing=True), dit_inputs()) == 0


@pytest.mark.parametrize('bad', [-1, 1.5, 'yes'])
def test_bad_checkpointing_values_are_rejected(bad):
    with pytest.raises(ValueError, match='grad_checkpointing must be'):
        DiT(**DIT, grad_checkpointing=bad)
    with pytest.raises(ValueError, match='grad_checkpointing must be'):
        VideoDiT(**VIDEO, grad_checkpointing=bad)

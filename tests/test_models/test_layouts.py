"""Memory layouts of the token stream: PackedLinear computes q, k and v apart, with
the values and gradients of timm / DiT's one packed product + reshape + permute (to
rounding), and neither the packed output nor its gradient is ever allocated;
PatchEmbed's tokens are contiguous, so the blocks' LayerNorms copy nothing."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmsora.models.layers.attention import Attention


def timm_attention(attn, x):
    """timm's / DiT's attention: one packed product, permuted into q, k, v."""
    N, T, D = x.shape
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.reshape(N, T, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.proj(out.transpose(1, 2).reshape(N, T, D))


def outputs_and_grads(fn, attn, x):
    x = x.clone().requires_grad_(True)
    attn.zero_grad()
    out = fn(x)
    out.square().sum().backward()
    return out, x.grad, attn.qkv.weight.grad.clone(), attn.qkv.bias.grad.clone()


def test_packed_linear_computes_the_packed_product():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, qkv_bias=True)
    x = torch.randn(2, 10, 32)
    ours = outputs_and_grads(attn, attn, x)
    timm = outputs_and_grads(lambda x: timm_attention(attn, x), attn, x)
    for got, ref in zip(ours, timm):
        torch.testing.assert_close(got, ref)
    # nn.Linear's packed parameters: DiT's checkpoints and initialisation apply
    assert isinstance(attn.qkv, nn.Linear) and attn.qkv.weight.shape == (96, 32)
    assert list(attn.state_dict()) == ['qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias']
    # FLOP counting runs on 'meta', a device autocast does not know
    parts = attn.to('meta').qkv(torch.empty(2, 10, 32, device='meta'))
    assert [p.shape for p in parts] == [(2, 10, 32)] * 3


class Numels(TorchDispatchMode):
    """The element counts of every operator's tensor outputs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        self.seen += [t.numel() for t in flat if isinstance(t, torch.Tensor)]
        return out


def test_no_packed_tensor_in_forward_or_backward():
    """On the CPU a packed tensor above glibc's mmap threshold was fresh pages every
    step (DiT-S/2 at batch 32: 36 MiB, forward output and backward gradient)."""
    torch.manual_seed(0)
    N, T, D = 4, 64, 32
    attn = Attention(D, num_heads=4, qkv_bias=True)
    x = torch.randn(N, T, D, requires_grad=True)
    counts = {}
    for name, fn in (('ours', attn), ('timm', lambda x: timm_attention(attn, x))):
        with Numels() as mode:
            fn(x).square().sum().backward()
        counts[name] = mode.seen.count(N * T * 3 * D)
    assert counts['ours'] == 0 and counts['timm'] >= 2, counts


def test_token_stream_stays_contiguous_through_the_blocks(monkeypatch):
    """PatchEmbed hands on contiguous tokens: with timm's transposed view every
    residual add kept its layout and each block's LayerNorms copied it."""
    from mmsora.models import DiT
    from mmsora.models.layers import embedders
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3,
                num_heads=2, num_classes=3).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.tensor([0, 2])

    def token_copies():
        with torch.profiler.profile(record_shapes=True) as prof:
            out = model(x, t, y)
        return out, sum(e.count for e in prof.key_averages(group_by_input_shape=True)
                        if e.key == 'aten::copy_' and e.input_shapes[:1] == [[2, 16, 32]])

    out, copies = token_copies()
    assert copies == 1  # PatchEmbed's own, once per forward
    view = embedders.PatchEmbed.forward
    monkeypatch.setattr(embedders.PatchEmbed, 'forward',
                        lambda self, x: view(self, x).transpose(1, 2).contiguous()
                        .transpose(1, 2))  # the transposed layout timm returns
    strided, copies = token_copies()
    # + the stand-in's own copy, + one per block LayerNorm (2 per block)
    assert copies >= 1 + 1 + 2 * 3 and torch.equal(out, strided)


def test_packed_backward_matches_autograd_with_a_part_unused():
    """PackedLinear's own backward (the weight's gradient written part by part): equal
    to autograd's of the one packed product, also where a part takes no part in the
    loss (its gradient None: zero rows) and without a bias; gradcheck in float64."""
    from mmsora.models.layers.attention import PackedLinear, _PackedProducts
    torch.manual_seed(0)
    for bias, parts in ((True, 3), (False, 2)):
        lin = PackedLinear(8, 8 * parts, parts=parts, bias=bias).double()
        x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
        outs = lin(x)
        (outs[0].square().sum() + outs[-1].sum()).backward()  # (part 1 of 3 unused)
        got = [lin.weight.grad.clone(), x.grad.clone()] + ([lin.bias.grad.clone()] if bias
                                                          else [])
        lin.zero_grad()
        x.grad = None
        ref = F.linear(x, lin.weight, lin.bias)
        (ref[..., :8].square().sum() + ref[..., -8:].sum()).backward()
        want = [lin.weight.grad, x.grad] + ([lin.bias.grad] if bias else [])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        if parts == 3:
            assert not got[0][8:16].any()
        inputs = (x.detach().requires_grad_(), lin.weight.detach().clone().requires_grad_(),
                  lin.bias.detach().clone().requires_grad_() if bias else None)
        assert torch.autograd.gradcheck(
            lambda x, w, b: _PackedProducts.apply(x, w, b, parts), inputs)

"""split_heads (unbind the packed axis, then move the heads) gives the same values
and the same gradients, bit for bit, as timm / DiT's reshape + permute, with one
copy fewer in the backward pass."""
import torch
import torch.nn.functional as F

from mmsora.models.layers import split_heads
from mmsora.models.layers.attention import Attention


def permuted(packed, num, num_heads):
    N, T, _ = packed.shape
    return packed.reshape(N, T, num, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def run(split, x, w):
    x = x.clone().requires_grad_(True)
    q, k, v = split(x @ w, 3, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    out.square().sum().backward()
    return out, x.grad


def test_split_heads_matches_permute_exactly():
    torch.manual_seed(0)
    x, w = torch.randn(2, 10, 32), torch.randn(32, 96)
    (a, ga), (b, gb) = run(split_heads, x, w), run(permuted, x, w)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    for got, ref in zip(split_heads(x @ w, 3, 4), permuted(x @ w, 3, 4)):
        assert got.shape == ref.shape == (2, 4, 10, 8) and torch.equal(got, ref)


def test_backward_makes_fewer_copies():
    attn = Attention(64, num_heads=4)
    x = torch.randn(2, 16, 64, requires_grad=True)

    def copies(split):
        import mmsora.models.layers.attention as module
        original = module.split_heads
        module.split_heads = split
        try:
            out = attn(x)
            with torch.profiler.profile() as prof:
                out.sum().backward()
        finally:
            module.split_heads = original
        return sum(e.count for e in prof.key_averages() if e.key == 'aten::copy_')

    assert copies(split_heads) < copies(permuted)

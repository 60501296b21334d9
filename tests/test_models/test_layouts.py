"""Memory layouts of the token stream: split_heads (unbind the packed axis, then move
the heads) gives the same values and the same gradients, bit for bit, as timm / DiT's
reshape + permute, with one copy fewer in the backward pass; PatchEmbed's tokens are
contiguous, so the blocks' LayerNorms copy nothing."""
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

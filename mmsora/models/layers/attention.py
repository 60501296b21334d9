"""Transformer sub-layers: multi-head self-attention and the MLP.

Parameter names follow timm's ``Attention`` / ``Mlp`` (``qkv``, ``proj``, ``fc1``,
``fc2``), which the original DiT release (Peebles & Xie 2023,
https://arxiv.org/abs/2212.09748) used, so its checkpoints load key for key without
depending on timm.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention_backends import attention


def _autocast_off(device: str):
    """A context with autocast off on ``device`` (none to turn off on 'meta', which
    autocast does not know)."""
    if torch.amp.is_autocast_available(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


class _PackedProducts(torch.autograd.Function):
    """``parts`` products of x with the row blocks of one packed weight, and a backward
    written for them: each part's weight gradient is multiplied straight into its rows
    of one (out_features, in_features) buffer, the input's gradient accumulated in one
    tensor, the bias's summed into its slices. (Autograd's own backward of the parts
    returned transposed weight gradients, concatenated them and added three input
    gradients: DiT-S/2's training step at batch 32 on a 2-core CPU took 8.9 s against
    8.3 s with this one, medians of a same-process A/B; docs/benchmarks.md, session
    46.) x, weight and bias come in one dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, parts):
        ctx.parts = parts
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)  # (an unused part's gradient: None, no zeros)
        ctx.save_for_backward(x, weight)
        biases = bias.chunk(parts) if bias is not None else (None,) * parts
        with _autocast_off(x.device.type):
            return tuple(F.linear(x, w, b) for w, b in zip(weight.chunk(parts), biases))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x2 = x.reshape(-1, x.shape[-1])  # (M, in)
        width = weight.shape[0] // ctx.parts
        # a part whose output took no part in the loss has no gradient: zero rows
        rows = [(i * width, g.reshape(-1, width)) for i, g in enumerate(grads)
                if g is not None]
        grad_x = grad_w = grad_b = None
        with _autocast_off(x.device.type):
            if need_x:
                grad_x = x2.new_zeros(x2.shape) if not rows else None
                for lo, g in rows:
                    w = weight[lo:lo + width]
                    grad_x = torch.mm(g, w) if grad_x is None else grad_x.addmm_(g, w)
                grad_x = grad_x.view(x.shape)
            if need_w:
                grad_w = (weight.new_empty(weight.shape) if len(rows) == ctx.parts
                          else weight.new_zeros(weight.shape))
                for lo, g in rows:
                    torch.mm(g.t(), x2, out=grad_w[lo:lo + width])
            if need_b and ctx.has_bias:
                grad_b = (weight.new_empty(weight.shape[0]) if len(rows) == ctx.parts
                          else weight.new_zeros(weight.shape[0]))
                for lo, g in rows:
                    torch.sum(g, dim=0, out=grad_b[lo:lo + width])
        return grad_x, grad_w, grad_b, None


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose output features are ``parts`` projections side by side
    (``qkv``: the queries', keys' and values'), returned as ``parts`` tensors, each
    the product with its slice of the weight.

    The weight, bias, their names and initialisation are ``nn.Linear``'s over all
    the features, so packed checkpoints (DiT's, timm's, Open-Sora's) load as they are.
    Computing the parts apart gives the same values as one packed product and slicing
    (to rounding), with no packed output in the forward nor packed gradient of the
    output in the backward. That is what matters on the CPU: there the packed tensors
    of DiT-S/2 at batch 32 (36 MiB) are above glibc's largest mmap threshold (32 MiB),
    so each was fresh pages every step (2.4x diffusers' page faults;
    docs/benchmarks.md). The backward (:class:`_PackedProducts`) writes the weight's
    gradient in place, part by part.
    """

    def __init__(self, in_features: int, out_features: int, parts: int,
                 bias: bool = True, **kwargs):
        if out_features % parts:
            raise ValueError(f'out_features {out_features} not divisible by {parts} parts')
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.parts = parts

    def forward(self, x: torch.Tensor) -> tuple:
        """x: (..., in_features) -> ``parts`` x (..., out_features / parts)."""
        device = x.device.type
        weight, bias = self.weight, self.bias
        # Under autocast, cast as F.linear would (once: the products share x and the
        # weight); the casts' own backward returns the gradients in float32.
        # Autocast knows no 'meta' device (FLOP counting runs there): ask first.
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return _PackedProducts.apply(x, weight, bias, self.parts)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, parts={self.parts}'


def split_heads(parts, num_heads: int) -> tuple:
    """Projections (N, T, D) -> views (N, H, T, Dh) for SDPA, one per part."""
    return tuple(p.unflatten(-1, (num_heads, -1)).transpose(1, 2) for p in parts)


def heads_message(hidden_size: int, num_heads: int) -> str:
    """A config's hidden_size that num_heads does not divide, in one line (raised under
    tools/train.py as its ``error:``) with the nearest fixes of either: the head counts
    that divide hidden_size, the hidden sizes that num_heads divides."""
    below = max(d for d in range(1, num_heads) if hidden_size % d == 0)
    above = [d for d in range(num_heads + 1, hidden_size + 1) if hidden_size % d == 0][:1]
    lower = hidden_size // num_heads * num_heads
    sizes = [s for s in (lower, lower + num_heads) if s > 0]
    return (f'hidden_size {hidden_size} must be divisible by num_heads {num_heads}: set '
            f"num_heads to {' or '.join(map(str, [below, *above]))}, or hidden_size to "
            f"{' or '.join(map(str, sizes))}")


class Attention(nn.Module):
    """Multi-head self-attention; the q, k, v projections packed in one weight
    (``qkv``, as DiT's and timm's) and computed apart (:class:`PackedLinear`)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:  # a config mistake: one line, not an AssertionError
            raise ValueError(heads_message(dim, num_heads))
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = PackedLinear(dim, dim * 3, parts=3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_backend = 'auto'  # see attention_backends.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) -> (N, T, D)."""
        N, T, D = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)  # 3 x (N, H, T, Dh)
        # A fused kernel (SDPA's flash / memory-efficient / CPU flash, or flash-attn /
        # xformers) never materialises the (T, T) attention matrix.
        x = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                      backend=self.attn_backend)
        x = x.transpose(1, 2).reshape(N, T, D)  # (N, T, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Two-layer MLP: fc1 -> activation -> fc2."""

    def __init__(self, in_features: int, hidden_features: int = None,
                 out_features: int = None, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) -> (N, T, out_features)."""
        x = self.drop1(self.act(self.fc1(x)))  # (N, T, hidden_features)
        return self.drop2(self.fc2(x))

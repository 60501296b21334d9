"""Masked multi-head cross-attention from video tokens to text tokens.

As in PixArt-alpha (Chen et al. 2023, https://arxiv.org/abs/2310.00426) and Open-Sora's
STDiT (hpcaitech/Open-Sora, ``MultiHeadCrossAttention``): queries are the visual tokens,
keys and values the (projected) caption tokens; parameter names ``q_linear``,
``kv_linear``, ``proj`` are theirs.
"""
from typing import Optional

import torch
import torch.nn as nn
from .attention import PackedLinear, heads_message, split_heads
from .attention_backends import attention


class MultiHeadCrossAttention(nn.Module):
    """Multi-head cross-attention with a key padding mask."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:  # a config mistake: one line, not an AssertionError
            raise ValueError(heads_message(dim, num_heads))
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = PackedLinear(dim, dim * 2, parts=2)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_backend = 'auto'  # see attention_backends.py (masked calls: SDPA)

    def forward(self, x: torch.Tensor, cond: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend from ``x`` to ``cond``.

        Args:
            x (Tensor): (N, M, D) query tokens (all tokens of a sample, any layout:
                each query attends on its own, so how they are grouped is irrelevant).
            cond (Tensor): (N, L, D) key/value tokens.
            mask (Tensor | None): (N, L), true (or 1) for real tokens, false for padding.
                A sample with no real token gets a zero output.

        Returns:
            Tensor: (N, M, D).
        """
        N, M, D = x.shape
        q = self.q_linear(x).reshape(N, M, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = split_heads(self.kv_linear(cond), self.num_heads)  # 2 x (N, H, L, Dh)
        attn_mask = None
        if mask is not None:
            mask = mask.to(torch.bool)
            attn_mask = mask[:, None, None, :]  # (N, 1, 1, L), broadcast over heads/queries
        out = attention(q, k, v, attn_mask=attn_mask,
                        dropout_p=self.attn_drop if self.training else 0.0,
                        backend=self.attn_backend)  # (N, H, M, Dh)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(N, M, D)))
        if mask is not None:
            # A fully masked row is a softmax over nothing (NaN or garbage, depending on
            # the SDPA kernel); such a sample has no text, so it gets no text signal.
            out = torch.where(mask.any(dim=1)[:, None, None], out, torch.zeros_like(out))
        return out

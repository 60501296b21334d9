"""Caption projection with a learned null caption for classifier-free guidance.

As in PixArt-alpha (Chen et al. 2023, https://arxiv.org/abs/2310.00426) and Open-Sora's
STDiT (``CaptionEmbedder``: ``y_proj`` MLP, ``y_embedding`` null caption), with padding
handled by an explicit mask so that padding never changes the result.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from mmsora.utils import sample_rng
from .attention import Mlp


class CaptionEmbedder(nn.Module):
    """Projects text-encoder tokens to the model width; drops captions to a null caption."""

    def __init__(self, in_channels: int, hidden_size: int, dropout_prob: float,
                 token_num: int = 120):
        super().__init__()
        self.y_proj = Mlp(in_features=in_channels, hidden_features=hidden_size,
                          out_features=hidden_size,
                          act_layer=lambda: nn.GELU(approximate='tanh'), drop=0)
        # The learned null caption, in text-encoder space (PixArt's scale: unit norm).
        self.y_embedding = nn.Parameter(torch.randn(token_num, in_channels) / in_channels ** 0.5)
        self.dropout_prob = dropout_prob

    def token_drop(self, caption: torch.Tensor, mask: Optional[torch.Tensor],
                   force_drop_ids: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Replace dropped captions by the null caption; ``force_drop_ids == 1`` forces a drop.

        A dropped sample sees exactly the ``token_num`` null tokens (its mask is one on
        them, zero elsewhere), whatever the batch's padded length ``L``; the batch is
        padded (mask zero) to ``token_num`` tokens when it is shorter.

        Args:
            caption (Tensor): (N, L, C) text-encoder tokens.
            mask (Tensor | None): (N, L) true for real tokens; None: all real.
            force_drop_ids (Tensor | None): (N,), 1 drops the sample's caption.

        Returns:
            tuple[Tensor, Tensor]: (N, L', C) tokens and (N, L') bool mask,
            L' = max(L, token_num).
        """
        N, L, C = caption.shape
        if force_drop_ids is None:
            drop = sample_rng.rand(N, caption.device) < self.dropout_prob
        else:
            drop = force_drop_ids.to(caption.device) == 1
        if mask is None:
            mask = torch.ones(N, L, dtype=torch.bool, device=caption.device)
        mask = mask.to(torch.bool)
        n_null = self.y_embedding.shape[0]
        if L < n_null:  # pad so the null caption fits
            caption = torch.cat([caption, caption.new_zeros(N, n_null - L, C)], dim=1)
            mask = torch.cat([mask, mask.new_zeros(N, n_null - L)], dim=1)
            L = n_null
        null = torch.cat([self.y_embedding.to(caption.dtype),
                          caption.new_zeros(L - n_null, C)], dim=0)  # (L, C)
        null_mask = torch.arange(L, device=caption.device) < n_null  # (L,)
        caption = torch.where(drop[:, None, None], null[None], caption)
        mask = torch.where(drop[:, None], null_mask[None], mask)
        return caption, mask

    def forward(self, caption: torch.Tensor, mask: Optional[torch.Tensor], train: bool,
                force_drop_ids: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """caption: (N, L, C), mask: (N, L) or None -> (N, L', D) tokens and their mask."""
        if (train and self.dropout_prob > 0) or (force_drop_ids is not None):
            caption, mask = self.token_drop(caption, mask, force_drop_ids)
        return self.y_proj(caption), mask

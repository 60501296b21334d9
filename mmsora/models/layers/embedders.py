"""Input and conditioning embedders of DiT (Peebles & Xie, "Scalable Diffusion Models
with Transformers", ICCV 2023, https://arxiv.org/abs/2212.09748).

Parameter names match the original release (``proj``, ``mlp.0``, ``embedding_table``)
so its checkpoints load with ``strict=True``.
"""
import math
from typing import Sequence, Union

import torch
import torch.nn as nn

from mmsora.utils import sample_rng


# --------------------------------------------------------------------------- #
#                        Embedding layers for patches                          #
# --------------------------------------------------------------------------- #
class PatchEmbed(nn.Module):
    """Image to patch tokens with a strided convolution (timm's parameter names).

    ``img_size`` is a side (square) or ``(H, W)``, e.g. (60, 106) for 480p SD-VAE latents.
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, bias: bool = True):
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h % patch_size or w % patch_size:
            raise ValueError(_patch_size_message(h, w, patch_size))
        self.img_size = (h, w)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (h // patch_size, w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size,
                              stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, T, D) with T = (H / p) * (W / p)."""
        # The position embedding is a fixed table for img_size, so other sizes would
        # silently pair tokens with the wrong positions.
        assert tuple(x.shape[-2:]) == self.img_size, (
            f'input size {tuple(x.shape[-2:])} does not match the model ({self.img_size})')
        # Contiguous (N, T, D): a transposed view would hand its layout on through every
        # residual add (``x + gate * f(x)`` keeps x's strides), so each LayerNorm copied
        # it again (25 copies per DiT-S/2 forward; 5-10% of a CPU step). timm / DiT
        # return the view; the values are the same.
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


def _patch_size_message(h: int, w: int, patch_size: int) -> str:
    """A config's input_size that patch_size does not divide, in one line (raised
    under tools/train.py as its ``error:``) with the two ways out: the patch sizes
    nearest it that divide both sides, or the input_size rounded to its multiples."""
    common = math.gcd(h, w)
    divisors = [d for d in range(1, common + 1) if common % d == 0]
    near = sorted(sorted(divisors, key=lambda d: (abs(d - patch_size), d))[:3])
    sides = [max(patch_size, round(s / patch_size) * patch_size) for s in (h, w)]
    return (f'input_size {h}x{w} is not a multiple of patch_size {patch_size}: set '
            f'patch_size to one that divides it ({_either(near)}), or input_size to '
            f'multiples of {patch_size} ({sides[0]}x{sides[1]})')


def _either(numbers) -> str:
    """'1, 2 or 4'."""
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# --------------------------------------------------------------------------- #
#               Embedding layers for timesteps and class labels                #
# --------------------------------------------------------------------------- #
class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps into vector representations."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        """Sinusoidal embeddings (N,) -> (N, dim), cos half first, as in GLIDE/DiT.

        Args:
            t (Tensor): 1-D tensor of N timesteps, one per sample; may be fractional.
            dim (int): Output dimension.
            max_period (int): Controls the minimum frequency of the embeddings.
        """
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
            / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (N,) -> (N, D)."""
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        # Match the MLP's dtype so bf16/fp16 weights need no autocast.
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Embeds class labels; drops labels to the null class for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        # Row ``num_classes`` is the null (unconditional) class.
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor = None) -> torch.Tensor:
        """Replace dropped labels by the null class; ``force_drop_ids == 1`` forces a drop."""
        if force_drop_ids is None:
            drop_ids = sample_rng.rand(labels.shape[0], labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool,
                force_drop_ids: torch.Tensor = None) -> torch.Tensor:
        """labels: (N,) -> (N, D)."""
        use_dropout = self.dropout_prob > 0
        if (train and use_dropout) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


# --------------------------------------------------------------------------- #
#                   Sine/cosine positional embedding functions                 #
# --------------------------------------------------------------------------- #
# Adapted from MAE (https://github.com/facebookresearch/mae) via DiT; computed in
# float64 like the original numpy code so the table is bit-for-bit the same.
def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Positions (M,) -> (M, embed_dim): sin half then cos half."""
    assert embed_dim % 2 == 0, f'embed_dim must be even, got {embed_dim}'
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega  # (D/2,)
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, D)


def get_2d_sincos_pos_embed_from_grid(embed_dim: int, grid: torch.Tensor) -> torch.Tensor:
    """Grid (2, H, W) -> (H * W, embed_dim): first half encodes grid[0], second grid[1]."""
    assert embed_dim % 2 == 0, f'embed_dim must be even, got {embed_dim}'
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (H*W, D/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (H*W, D/2)
    return torch.cat([emb_h, emb_w], dim=1)  # (H*W, D)


def get_2d_sincos_pos_embed(embed_dim: int,
                            grid_size: Union[int, Sequence[int]]) -> torch.Tensor:
    """Fixed 2-D sine/cosine table (H * W, embed_dim), float64, row-major over (H, W).

    Args:
        embed_dim (int): Embedding dimension (even).
        grid_size (int | tuple[int, int]): Grid height and width in tokens.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    grid_h = torch.arange(gh, dtype=torch.float32)
    grid_w = torch.arange(gw, dtype=torch.float32)
    # As in the original (np.meshgrid's 'xy' indexing): w goes first.
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing='xy'), dim=0)  # (2, H, W)
    return get_2d_sincos_pos_embed_from_grid(embed_dim, grid)

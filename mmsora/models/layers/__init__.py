"""Building blocks shared by the denoisers (DiT, VideoDiT, ...)."""
from .attention import Attention, Mlp, PackedLinear, split_heads
from .attention_backends import ATTENTION_BACKENDS, installed_backends, set_attention_backend
from .caption_embedder import CaptionEmbedder
from .cross_attention import MultiHeadCrossAttention
from .embedders import (LabelEmbedder, PatchEmbed, TimestepEmbedder,
                        get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed,
                        get_2d_sincos_pos_embed_from_grid)
from .modulate import modulate

__all__ = [
    'Attention', 'Mlp', 'PackedLinear', 'split_heads', 'ATTENTION_BACKENDS', 'installed_backends',
    'set_attention_backend', 'CaptionEmbedder', 'MultiHeadCrossAttention', 'PatchEmbed', 'TimestepEmbedder', 'LabelEmbedder', 'modulate',
    'get_1d_sincos_pos_embed_from_grid', 'get_2d_sincos_pos_embed_from_grid',
    'get_2d_sincos_pos_embed'
]

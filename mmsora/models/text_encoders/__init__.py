"""Frozen text encoders (T5, CLIP) that turn captions into token embeddings."""
from .hf_text_encoder import HFTextEncoder

__all__ = ['HFTextEncoder']

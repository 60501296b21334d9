"""Denoisers: one architecture per file."""
from .dit import DIT_PRESETS, DiT, dit_flops, dit_preset

__all__ = ['DiT', 'DIT_PRESETS', 'dit_preset', 'dit_flops']

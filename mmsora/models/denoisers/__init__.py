"""Denoisers: one architecture per file."""
from .dit import DIT_PRESETS, DiT, dit_flops, dit_preset
from .video_dit import VideoDiT, inflate_dit_state_dict

__all__ = ['DiT', 'DIT_PRESETS', 'dit_preset', 'dit_flops', 'VideoDiT', 'inflate_dit_state_dict']
from .stable_cascade_video import StableCascadeVideo  # noqa: E402
__all__ += ['StableCascadeVideo']

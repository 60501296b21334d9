"""Utilities: checkpoint io, video io, misc."""
from .checkpoint import load_checkpoint_file
from .weight_loading import extract_state_dict, load_dit_checkpoint

__all__ = ['load_checkpoint_file', 'extract_state_dict', 'load_dit_checkpoint']

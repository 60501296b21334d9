"""Utilities: checkpoint io, video io, misc."""
from .checkpoint import extract_state_dict, load_checkpoint_file, load_dit_checkpoint

__all__ = ['load_checkpoint_file', 'extract_state_dict', 'load_dit_checkpoint']

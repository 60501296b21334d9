"""A project of one's own on mmsora: importing this package registers its classes
(the config's ``custom_imports`` imports it)."""
from .blobs_dataset import ColourBlobs
from .conv_denoiser import TinyConvDenoiser

__all__ = ['ColourBlobs', 'TinyConvDenoiser']

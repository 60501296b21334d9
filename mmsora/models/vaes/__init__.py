"""VAE wrappers that map images/videos to scaled latents and back."""
from .autoencoder_kl import AutoencoderKLWrapper

__all__ = ['AutoencoderKLWrapper']

"""VAE wrappers that map images/videos to scaled latents and back."""
from .autoencoder_kl import AutoencoderKLWrapper
from .video_vae import VIDEO_VAE_CLASSES, VideoVAEWrapper

__all__ = ['AutoencoderKLWrapper', 'VideoVAEWrapper', 'VIDEO_VAE_CLASSES']
from .stable_cascade_decoder import StableCascadeDecoder  # noqa: E402
__all__ += ['StableCascadeDecoder']

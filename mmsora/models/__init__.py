"""Models: denoisers (DiT, ...), VAE wrappers and the LatentDiffusion training wrapper."""
from .denoisers import *  # noqa: F401,F403
from .vaes import *  # noqa: F401,F403
from .text_encoders import *  # noqa: F401,F403
from .latent_diffusion import LatentDiffusion  # noqa: E402

__all__ = ['LatentDiffusion']

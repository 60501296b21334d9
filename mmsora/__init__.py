"""mmsora: train and sample Sora-style video diffusion transformers on modest GPUs."""
__version__ = '0.1.0'

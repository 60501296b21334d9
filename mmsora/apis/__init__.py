"""Python API used by tools/infer.py: load a run, sample, save."""
from .inference import (find_run, init_model, load_weights, sample_images,
                        save_image_grid)
from .video import save_videos, video_paths

__all__ = ['find_run', 'init_model', 'load_weights', 'sample_images', 'save_image_grid',
           'save_videos', 'video_paths']

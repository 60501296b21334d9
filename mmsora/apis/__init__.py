"""Python API used by tools/infer.py: load a run, sample, save."""
from .evaluation import build_evaluator, check_metric_inputs, evaluate_model
from .inference import (find_run, init_model, load_weights, sample_images,
                        save_image_grid)
from .mass_sampling import (init_sampling_processes, mass_sample, rank_batches, sample_plan,
                            to_uint8_samples)
from .text2video import text_to_video
from .video import is_clip_folder, save_videos, video_paths

__all__ = ['find_run', 'init_model', 'load_weights', 'sample_images', 'save_image_grid',
           'save_videos', 'video_paths', 'is_clip_folder', 'build_evaluator',
           'check_metric_inputs', 'evaluate_model', 'mass_sample',
           'init_sampling_processes', 'rank_batches', 'sample_plan', 'to_uint8_samples',
           'text_to_video']

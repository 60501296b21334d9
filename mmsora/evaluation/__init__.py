"""Evaluation of generative models: FID / IS, FVD and CLIP score as mmengine metrics,
their feature networks (read from local weight files), and the metric maths."""
from .extractors import *  # noqa: F401,F403
from .functional import (clip_score, feature_stats, frechet_distance, inception_score,
                         load_stats, save_stats)
from .metrics import *  # noqa: F401,F403

__all__ = ['feature_stats', 'frechet_distance', 'inception_score', 'clip_score',
           'save_stats', 'load_stats', 'SampleMetric', 'FID', 'FVD', 'InceptionScore',
           'CLIPScore', 'InceptionV3FID', 'I3DTorchScript', 'CLIPEmbedder']

"""Metrics on generated samples (mmengine ``BaseMetric``s in ``METRICS``)."""
from .base import SampleMetric
from .clip_score import CLIPScore
from .frechet import FID, FVD
from .inception_score import InceptionScore

__all__ = ['SampleMetric', 'FID', 'FVD', 'InceptionScore', 'CLIPScore']

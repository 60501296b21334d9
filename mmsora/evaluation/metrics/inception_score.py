"""Inception Score (Salimans et al. 2016) of generated pictures."""
from typing import Dict, List

from mmsora.registry import METRICS

from ..functional import inception_score
from .base import SampleMetric, stack_results

__all__ = ['InceptionScore']


@METRICS.register_module()
class InceptionScore(SampleMetric):
    """Inception Score; needs no reference. (``FID(inception_score=True)`` gives the same
    number from FID's Inception pass.)

    Args:
        extractor (dict): ``dict(type='InceptionV3FID', weights=...)``; any extractor
            that returns ``logits``.
        split_size (int): Samples per split (ADM evaluator: 5000, i.e. 10 splits for 50K).
        **kwargs: See :class:`SampleMetric`.
    """

    result_keys = ('IS', 'IS_std')

    def __init__(self, extractor: dict, split_size: int = 5000, **kwargs):
        super().__init__(extractor, **kwargs)
        self.split_size = split_size

    def sample_results(self, data_samples):
        return dict(logits=super().sample_results(data_samples)['logits'])

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        mean, std = inception_score(stack_results(results)['logits'], self.split_size)
        return dict(IS=mean, IS_std=std)

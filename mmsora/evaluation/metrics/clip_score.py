"""CLIP score (Hessel et al. 2021; torchmetrics' scaling) of text-to-image / video
samples against their prompts."""
from typing import Dict, List, Optional

import numpy as np

from mmsora.registry import METRICS

from ..functional import clip_score
from .base import SampleMetric, stack_results, to_channels_first

__all__ = ['CLIPScore']


@METRICS.register_module()
class CLIPScore(SampleMetric):
    """Mean ``100 * max(cos(CLIP image, CLIP text), 0)`` over samples; a clip scores the
    mean over its frames (the CLIPSIM of text-to-video papers).

    Args:
        extractor (dict): ``dict(type='CLIPEmbedder', pretrained_path=...)``.
        num_frames (int, optional): Score this many evenly spaced frames of each clip;
            default all.
        **kwargs: See :class:`SampleMetric`.
    """

    result_keys = ('CLIPScore',)

    def __init__(self, extractor: dict, num_frames: Optional[int] = None, **kwargs):
        super().__init__(extractor, **kwargs)
        self.num_frames = num_frames

    def sample_results(self, data_samples):
        prompts = [s.get('prompt') for s in data_samples]
        if any(p is None for p in prompts):
            raise ValueError('CLIPScore needs a prompt per sample: sample a text-conditioned '
                             'model from prompts (evaluation.prompts)')
        x = to_channels_first(np.stack([s['sample'] for s in data_samples]))
        if x.dim() == 5:                                      # (N, 3, T, H, W)
            t = x.shape[2]
            keep = (np.linspace(0, t - 1, self.num_frames).round().astype(int)
                    if self.num_frames else np.arange(t))
            frames = x[:, :, keep].permute(0, 2, 1, 3, 4)     # (N, T', 3, H, W)
            n, t = frames.shape[:2]
            images = self.extractor.encode_images(frames.reshape(n * t, *frames.shape[2:]))
            texts = self.extractor.encode_texts(prompts).repeat_interleave(t, dim=0)
            scores = clip_score(images.cpu().numpy(), texts.cpu().numpy()).reshape(n, t)
            return dict(clip_score=scores.mean(axis=1))
        images = self.extractor.encode_images(x)
        texts = self.extractor.encode_texts(prompts)
        return dict(clip_score=clip_score(images.cpu().numpy(), texts.cpu().numpy()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        return dict(CLIPScore=float(stack_results(results)['clip_score'].mean()))

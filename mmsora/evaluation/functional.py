"""The metric maths, on numpy arrays: Frechet distance (FID / FVD), Inception Score,
CLIP score, and feature statistics files.

The formulas follow the ADM evaluator (Dhariwal & Nichol 2021,
``guided-diffusion/evaluations/evaluator.py``), which produced the FID-50K figures of
DiT and SiT: statistics in float64, ``np.cov(rowvar=False)``, ``scipy.linalg.sqrtm``
of the covariance product with an ``eps`` offset when it is singular, and the Inception
Score over splits of 5000 samples.
"""
import warnings
from typing import Dict, Tuple

import numpy as np
from scipy import linalg

__all__ = ['feature_stats', 'frechet_distance', 'inception_score', 'clip_score',
           'save_stats', 'load_stats']


def feature_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f'need at least 2 feature vectors (N, D), got shape {features.shape}')
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``, computed as
    the ADM evaluator and pytorch-fid do.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f'statistics of different sizes: mean {mu1.shape} vs {mu2.shape}, '
                         f'covariance {sigma1.shape} vs {sigma2.shape} (features of '
                         'different extractors?)')
    diff = mu1 - mu2
    with warnings.catch_warnings():  # scipy's 'singular matrix' warning: a singular
        warnings.simplefilter('ignore', linalg.LinAlgWarning)  # product is handled here
        covmean = linalg.sqrtm(sigma1.dot(sigma2))  # (disp=False: deprecated in 1.16)
        if not np.isfinite(covmean).all():  # singular product: offset the diagonals
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f'imaginary component {np.max(np.abs(covmean.imag))} in the '
                             'covariance square root')
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits: np.ndarray, split_size: int = 5000) -> Tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` from classifier logits (N, K).

    As the ADM evaluator: the samples are cut, in order, into splits of ``split_size``
    (10 splits for 50K samples), a score is computed per split, and the mean (and
    standard deviation) over splits is returned.
    """
    probs = _softmax(logits)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        marginal = part.mean(axis=0, keepdims=True)
        kl = part * (np.log(part + 1e-30) - np.log(marginal + 1e-30))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def clip_score(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Per-pair CLIP score ``100 * max(cos(image, text), 0)`` (Hessel et al. 2021's
    definition, with torchmetrics' scale of 100); rows of the two arrays are paired.
    The metric averages these per-pair scores. torchmetrics' ``CLIPScore`` instead
    clamps the mean of ``100 * cos`` at 0, which differs where some pair has a
    negative cosine."""
    a = np.asarray(image_embeds, dtype=np.float64)
    b = np.asarray(text_embeds, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f'image and text embeddings differ in shape: {a.shape} vs {b.shape}')
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100.0 * np.maximum(cos, 0.0)


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **meta) -> str:
    """Write feature statistics as ``.npz`` (``mu``, ``sigma``: the ADM evaluator's
    keys, so its reference batches and our caches read alike)."""
    from mmsora.utils.atomic_io import atomic_file
    with atomic_file(path) as f:  # a crash never leaves a half-written cache
        np.savez(f, mu=mu, sigma=sigma, **meta)
    return path


def load_stats(path: str) -> Dict[str, np.ndarray]:
    """Read ``mu`` and ``sigma`` from an ``.npz`` (ours or an ADM reference batch)."""
    with np.load(path) as data:
        if 'mu' not in data or 'sigma' not in data:
            raise KeyError(f'{path} holds no feature statistics (keys mu, sigma); it has '
                           f'{sorted(data.files)}')
        return dict(mu=data['mu'], sigma=data['sigma'])

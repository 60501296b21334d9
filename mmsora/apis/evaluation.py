"""Evaluate a model by sampling: the code shared by tools/test.py and
:class:`mmsora.engine.hooks.SampleEvaluationHook`.

A config's ``evaluation`` section says what to sample and how to score it::

    evaluation = dict(
        num_samples=50000, batch_size=32, seed=0,
        sample_cfg=dict(sampler='ddpm', num_steps=250, cfg_scale=1.5),
        metrics=[dict(type='FID', reference='...', extractor=dict(...))])

(Not mmengine's ``test_evaluator``: mmengine's Runner would then demand a test
dataloader, and there is no data to iterate over when generating.)
"""
from typing import Dict, Optional, Sequence

from mmengine.evaluator import Evaluator

from mmsora.diffusion.scheduler_sampling import NOT_SAMPLE_ARGS, merge_sample_cfg

from .mass_sampling import mass_sample, random_labels

__all__ = ['build_evaluator', 'check_metric_inputs', 'evaluate_model', 'output_size']



def build_evaluator(metrics: Sequence[dict]) -> Evaluator:
    """An mmengine ``Evaluator`` of metric configs built from mmsora's ``METRICS``."""
    import mmsora.evaluation  # noqa: F401  (registers the metrics)
    from mmsora.registry import METRICS
    if isinstance(metrics, dict):
        metrics = [metrics]
    if not metrics:
        raise ValueError('evaluation.metrics is empty: name at least one metric, e.g. '
                         "dict(type='FID', ...)")
    built = [METRICS.build(m) for m in metrics]
    check_result_names(built)
    return Evaluator(built)


def check_result_names(metrics: Sequence) -> None:
    """Refuse two metrics that report a result of the same name (``FID`` with
    ``inception_score=True`` beside an ``InceptionScore``: both give ``IS``), which
    mmengine's ``Evaluator`` found only after all the sampling."""
    seen = {}
    for metric in metrics:
        names = getattr(metric, 'result_names', None)
        label = type(metric).__name__ + (' (inception_score=True)'
                                         if getattr(metric, 'inception_score', False) is True
                                         else '')
        for name in (names() if callable(names) else ()):
            if name in seen:
                raise ValueError(f'evaluation.metrics: {seen[name]} and {label} both report '
                                 f'{name}: drop one of them, or give one a prefix '
                                 f"(prefix='...' in its config names its results "
                                 f'PREFIX/{name})')
            seen[name] = label


def check_metric_inputs(evaluator: Evaluator, num_samples: Optional[int] = None,
                        sample_size: Optional[tuple] = None) -> None:
    """Raise for a reference or extractor weights that a metric of ``evaluator``
    will read, for a reference of another size than ``sample_size`` (see
    :func:`output_size`) and for too few samples: before the sampling, not after it."""
    for metric in evaluator.metrics:
        check = getattr(metric, 'check_inputs', None)
        if check is not None:
            check(num_samples=num_samples, sample_size=sample_size)


def output_size(model) -> Optional[tuple]:
    """(H, W) of the pictures or (T, H, W) of the clips ``model`` samples, from its
    ``latent_shape`` and VAE factor; None for a size known only after decoding (a
    VAE that compresses time; Stable Cascade's rounding)."""
    shape = getattr(model, 'latent_shape', None)
    if shape is None or len(shape) not in (3, 4):
        return None
    vae = getattr(model, 'vae', None)
    factor = 1 if vae is None else getattr(vae, 'downsample_factor', None)
    exact = isinstance(factor, int) and not hasattr(vae, 'latent_size')
    size = [side * factor if exact else None for side in shape[-2:]]
    if len(shape) == 4:
        compresses_time = callable(getattr(vae, 'latent_shape', None))
        size.insert(0, None if compresses_time else shape[1])
    return tuple(size)


def evaluate_model(model, metrics: Sequence[dict], num_samples: int = 50000,
                   batch_size: int = 16, seed: int = 0, sample_cfg: Optional[dict] = None,
                   labels: Optional[Sequence[int]] = None,
                   prompts: Optional[Sequence[str]] = None, out: Optional[str] = None,
                   sample_dir: Optional[str] = None, progress: bool = True,
                   default_sample_cfg: Optional[dict] = None) -> Dict[str, float]:
    """Sample ``num_samples`` items over all ranks and compute the metrics.

    Called as ``evaluate_model(model, **cfg.evaluation, default_sample_cfg=
    cfg.sample_cfg)``.

    Args:
        model: A ``LatentDiffusion`` in eval mode.
        metrics (Sequence[dict]): Metric configs (``METRICS``).
        num_samples (int): Samples in all (FID-50K: 50000).
        batch_size (int): Size of the fixed batches, each drawn whole by one process
            (per-process memory, not split among the processes; see
            :func:`mass_sample`).
        seed (int): Sample i uses seed ``seed + i``.
        sample_cfg (dict, optional): Sampler settings for the evaluation (sampler,
            num_steps, cfg_scale, ...), over ``default_sample_cfg``.
        labels (Sequence[int] | str, optional): Classes to cycle through (default all:
            each class equally often), or ``'random'``: each sample's class drawn
            uniformly, as DiT's and SiT's ``sample_ddp.py`` draw them
            (``torch.randint``), here from ``seed`` alone, so the same on any number of
            processes.
        prompts (Sequence[str], optional): Prompts to cycle through (text models).
        out, sample_dir: Also save the samples (see :func:`mass_sample`).
        progress (bool): Progress bar on rank 0.
        default_sample_cfg (dict, optional): The config's ``sample_cfg``.

    Returns:
        dict: metric name -> value, on every rank.
    """
    kwargs = merge_sample_cfg(default_sample_cfg, sample_cfg)
    for key in NOT_SAMPLE_ARGS:
        kwargs.pop(key, None)
    evaluator = build_evaluator(metrics)
    check_metric_inputs(evaluator, num_samples, output_size(model))
    if isinstance(labels, str):
        if labels != 'random':
            raise ValueError(f"evaluation.labels: a list of classes, or 'random', got "
                             f'{labels!r}')
        labels = random_labels(model.num_classes, num_samples, seed)
    result = mass_sample(
        model, num_samples, labels or list(range(model.num_classes)), seed=seed,
        batch_size=batch_size, prompts=prompts, out=out, sample_dir=sample_dir,
        evaluator=evaluator, progress=progress, **kwargs)
    return result['metrics']

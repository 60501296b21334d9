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

__all__ = ['build_evaluator', 'check_metric_keys', 'check_metric_inputs', 'prepare_metrics',
           'evaluate_model', 'evaluation_record', 'metric_configs', 'output_size']



def build_evaluator(metrics: Sequence[dict]) -> Evaluator:
    """An mmengine ``Evaluator`` of metric configs built from mmsora's ``METRICS``."""
    import mmsora.evaluation  # noqa: F401  (registers the metrics)
    from mmsora.registry import METRICS
    if isinstance(metrics, dict):
        metrics = [metrics]
    if not metrics:
        raise ValueError('evaluation.metrics is empty: name at least one metric, e.g. '
                         "dict(type='FID', ...)")
    built = []
    for i, metric in enumerate(metrics):
        check_metric_keys(metric, f'metrics[{i}]')
        built.append(METRICS.build(metric))
        if hasattr(built[-1], 'config_path'):  # for the messages of its checks
            built[-1].config_path = f'metrics[{i}]'
    check_result_names(built)
    return Evaluator(built)


def check_metric_keys(metric: dict, where: str) -> None:
    """Refuse a key the metric does not take (``refrence``), naming the metric's
    type and the close keys, before it is built: the message came from Python's
    TypeError and named the class that raised it, ``SampleMetric`` under
    tools/train.py's evaluation hook, ``FID`` under tools/test.py."""
    from mmsora.evaluation.metrics.base import config_arguments
    from mmsora.registry import METRICS
    from mmsora.utils.error_messages import unknown_key_message
    kind = metric.get('type') if isinstance(metric, dict) else None
    cls = METRICS.get(kind) if isinstance(kind, str) else kind
    if not isinstance(cls, type):
        return  # (an unknown type: the registry says it when building)
    names, complete = config_arguments(cls)
    for key in metric:
        if complete and key not in ('type', '_scope_') and key not in names:
            raise ValueError(f'{where}: ' + unknown_key_message(cls.__name__, key,
                                                                names=names))


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


def prepare_metrics(evaluator: Optional[Evaluator]) -> None:
    """What the metrics need besides the samples (a Frechet metric's reference
    statistics: read, from their cache, or computed and cached), now, before the
    sampling: a reference that fails (unreadable, out of memory) stops the run
    before hours of sampling, not after them. On the main process only, where
    mmengine computes the metrics."""
    from mmengine.dist import is_main_process
    if evaluator is None or not is_main_process():
        return
    for metric in evaluator.metrics:
        prepare = getattr(metric, 'prepare', None)
        if prepare is not None:
            prepare()


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
    # not sampler settings; fps is the frame rate of the clips sample_dir gets (a
    # video config's, 4 for the demo: they were written at mass_sample's 8)
    saving = {key: kwargs.pop(key) for key in NOT_SAMPLE_ARGS if key in kwargs}
    evaluator = build_evaluator(metrics)
    check_metric_inputs(evaluator, num_samples, output_size(model))
    if isinstance(labels, str):
        if labels != 'random':
            raise ValueError(f"evaluation.labels: a list of classes, or 'random', got "
                             f'{labels!r}')
        labels = random_labels(model.num_classes, num_samples, seed)
    prepare_metrics(evaluator)
    result = mass_sample(
        model, num_samples, labels or list(range(model.num_classes)), seed=seed,
        batch_size=batch_size, prompts=prompts, out=out, sample_dir=sample_dir,
        evaluator=evaluator, progress=progress, **saving, **kwargs)
    return result['metrics']


def evaluation_record(model, metrics: Dict[str, float], evaluation: dict,
                      sample_cfg: Optional[dict] = None, **extra) -> dict:
    """What an evaluation scored, for a JSON file beside its values (tools/test.py
    ``--json``): the file the weights came from and which ones they are (as
    ``init_model`` loaded them: ``use_ema`` true only where EMA weights were
    scored, None where the file does not say), the samples' protocol (number, seed,
    labels ``'random'`` or ``'cycled'``, prompts), the sampler settings (not the
    frame rate of saved clips) and each metric's config (its reference file and
    its extractor's weights).

    Args:
        model: The model scored (``init_model``'s: ``loaded_from``,
            ``loaded_weights``).
        metrics (dict): :func:`evaluate_model`'s result.
        evaluation (dict): The ``evaluation`` section as scored (after the options).
        sample_cfg (dict, optional): The sampler settings scored with.
        **extra: More entries (``run=...``).
    """
    loaded = getattr(model, 'loaded_weights', None)
    labels = evaluation.get('labels')
    record = dict(
        metrics=dict(metrics),
        checkpoint=getattr(model, 'loaded_from', None), weights=loaded,
        use_ema={'EMA weights': True, 'trained weights': False}.get(loaded),
        num_samples=evaluation.get('num_samples'), seed=evaluation.get('seed', 0),
        sample_cfg={k: v for k, v in (sample_cfg or {}).items() if k not in NOT_SAMPLE_ARGS},
        metric_configs=metric_configs(evaluation))
    if evaluation.get('prompts'):  # (as sampled: one str is one prompt, not its letters)
        from mmsora.models.latent_diffusion import prompt_list
        record['prompts'] = prompt_list(evaluation['prompts'])
    else:  # a class model: drawn from the seed, or cycled through (these, or all)
        record['labels'] = 'random' if labels == 'random' else 'cycled'
        if labels is not None and labels != 'random':
            record['classes'] = list(labels)
    record.update(extra)
    return record


def metric_configs(evaluation: dict) -> list:
    """An evaluation section's metrics (one dict, or a list of them) as a list of plain
    dicts and lists, as a JSON record keeps them."""
    metrics = evaluation.get('metrics') or []
    return [_plain(m) for m in ([metrics] if isinstance(metrics, dict) else metrics)]


def _plain(value):
    """A config's dicts and lists as plain ones (ConfigDict, tuples), for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

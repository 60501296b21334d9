"""Evaluate a model during training by sampling: FID / IS / FVD / CLIP score every
``interval`` iterations.

mmengine's ValLoop iterates over a dataset and calls the model's ``val_step``; a
generative model has no data to iterate over, needs seeds per sample and its own
sampler settings, and should be scored with its EMA weights. This hook samples
through :func:`mmsora.apis.evaluate_model` (the same fixed-seed, world-size-invariant
protocol as ``tools/test.py``) with the EMA model of the ``EMAHook`` when
there is one, and logs the metrics like a validation epoch would. Under ``--fsdp``
every process samples its share through the sharded model
(:class:`~mmsora.engine.hooks.sampling_model.ShardedSampler`).
"""
from typing import Optional, Sequence

from mmengine.hooks import Hook

from mmsora.registry import HOOKS

from .rng_state_hook import get_rng_states, set_rng_states
from .sampling_model import sampling_model

__all__ = ['SampleEvaluationHook']


@HOOKS.register_module()
class SampleEvaluationHook(Hook):
    """Sample ``num_samples`` items every ``interval`` iterations and log the metrics.

    Args:
        metrics (Sequence[dict]): Metric configs (``FID``, ``InceptionScore``, ``FVD``,
            ``CLIPScore``, ...).
        interval (int): Evaluate every this many training iterations.
        num_samples (int): Samples per evaluation (a few thousand during training;
            the final FID-50K with ``tools/test.py``).
        batch_size (int): Fixed global sampling batch size.
        seed (int): Sample i uses seed ``seed + i`` at every evaluation, so the
            values of successive evaluations differ by the weights only.
        sample_cfg (dict, optional): Sampler settings over the config's ``sample_cfg``.
        labels (Sequence[int], optional): Classes to cycle through; default all.
        prompts (Sequence[str], optional): Prompts to cycle through (text models).
        use_ema (bool): Score the EMA weights of ``EMAHook`` when it is registered.
        evaluate_at_end (bool): Also evaluate after the last iteration.
    """

    # After EMAHook has updated the averaged weights, and after CheckpointHook has
    # saved the iteration: an evaluation that fails (a wrong setting, out of memory)
    # stops the run without losing the checkpoint of the same iteration.
    priority = 'LOWEST'

    def __init__(self, metrics: Sequence[dict], interval: int = 10000,
                 num_samples: int = 5000, batch_size: int = 16, seed: int = 0,
                 sample_cfg: Optional[dict] = None, labels: Optional[Sequence[int]] = None,
                 prompts: Optional[Sequence[str]] = None, use_ema: bool = True,
                 evaluate_at_end: bool = True):
        if interval < 1 or num_samples < 2:
            raise ValueError(f'SampleEvaluationHook needs interval >= 1 and num_samples '
                             f'>= 2, got {interval} and {num_samples}')
        self.metrics = list(metrics)
        self.interval = interval
        self.evaluate_at_end = evaluate_at_end
        self.use_ema = use_ema
        self.settings = dict(num_samples=num_samples, batch_size=batch_size, seed=seed,
                             sample_cfg=sample_cfg, labels=labels, prompts=prompts)
        self._last_evaluated = None

    def evaluate(self, runner, step: int) -> dict:
        """Sample, score, log under iteration ``step``; returns the metrics (every rank)."""
        from mmsora.apis import evaluate_model
        with sampling_model(runner, self.use_ema) as model:
            was_training = model.training
            states = get_rng_states()  # sampling must not shift the training noise
            try:
                model.eval()
                metrics = evaluate_model(model, self.metrics, **self.settings,
                                         default_sample_cfg=runner.cfg.get('sample_cfg'),
                                         progress=False)
            finally:
                set_rng_states(states)
                model.train(was_training)
        text = '  '.join(f'{k}: {v:.4f}' for k, v in metrics.items())
        runner.logger.info(f'Iter(eval) [{step}] {self.settings["num_samples"]} samples  {text}')
        for key, value in metrics.items():
            runner.message_hub.update_scalar(f'eval/{key}', value)
        runner.visualizer.add_scalars({f'eval/{k}': v for k, v in metrics.items()}, step=step)
        self._last_evaluated = step
        return metrics

    def before_train(self, runner):
        """A missing reference or extractor weights, a reference of another size than
        the model samples and too few samples stop the run before its first step, not
        at the first evaluation (after training, with ``interval`` past
        ``max_iters``)."""
        from mmengine.model import is_model_wrapper

        from mmsora.apis import build_evaluator, check_metric_inputs
        from mmsora.apis.evaluation import output_size
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_metric_inputs(build_evaluator(self.metrics), self.settings['num_samples'],
                            output_size(model))
        self._check_sampler(runner)

    def _check_sampler(self, runner) -> None:
        """A sampler name the objective does not have (a typo) stops the run now,
        not at the first evaluation (``interval`` iterations in)."""
        from mmengine.model import is_model_wrapper

        from mmsora.diffusion.scheduler_sampling import check_sampler_name, merge_sample_cfg
        settings = merge_sample_cfg(runner.cfg.get('sample_cfg'), self.settings['sample_cfg'])
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        diffusion = getattr(model, 'diffusion', None)
        if settings.get('sampler') is not None and hasattr(diffusion, 'samplers'):
            check_sampler_name(settings['sampler'], diffusion.samplers(),
                               type(diffusion).__name__)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.every_n_train_iters(runner, self.interval):
            self.evaluate(runner, runner.iter + 1)  # runner.iter counts from 0 here
            _restart_iteration_timers(runner)

    def after_train(self, runner):
        if self.evaluate_at_end and self._last_evaluated != runner.iter:
            self.evaluate(runner, runner.iter)


def _restart_iteration_timers(runner) -> None:
    """Leave the evaluation's time out of the training's: IterTimerHook times each
    iteration from the end of the one before, so the next iteration's ``time`` and
    ``data_time`` (and the ETA from their means over the log window) held the whole
    evaluation."""
    import time

    from mmengine.hooks import IterTimerHook
    for hook in runner.hooks:
        if isinstance(hook, IterTimerHook):
            hook.t = time.time()

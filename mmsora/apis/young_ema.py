"""How much of its initial weights a run's EMA still holds, as its checkpoint records
it: the EMA weights of a short run sample noise, which tools/infer.py took by default
without a word why.

mmengine's average (``BaseAveragedModel.update_parameters``) copies the weights at its
first update, then every ``interval``-th update moves ``avg += momentum * (weight -
avg)``: after ``steps`` updates it holds ``(1 - momentum) ** ((steps - 1) // interval)``
of the weights it started from. With DiT's decay 0.9999 (momentum 1e-4) that is 90%
after 1000 updates: a few thousand iterations on one card give EMA weights that are
mostly the random initial ones.
"""
from typing import Optional

__all__ = ['FIXED_MOMENTUM_AVERAGES', 'MOSTLY_INITIAL', 'initial_share', 'ema_settings',
           'ema_updates', 'young_ema_warning']

# The averages that move by that rule at a fixed momentum, whose share follows from the
# count of updates alone. Others (mmengine's MomentumAnnealingEMA, an average of one's
# own) are not judged: their rule is not known here.
FIXED_MOMENTUM_AVERAGES = ('ExponentialMovingAverage', 'FP32ExponentialMovingAverage',
                           'ShardedEMA')

# The share of its initial weights above which the EMA weights are warned about.
MOSTLY_INITIAL = 0.5


def initial_share(updates: int, momentum: float, interval: int = 1) -> float:
    """The share of the weights it started from that an EMA of ``momentum`` holds after
    ``updates`` updates (its ``steps``): the first copies the weights, then every
    ``interval``-th moves the average."""
    moves = max(updates - 1, 0) // interval
    return (1 - momentum) ** moves


def ema_settings(checkpoint) -> Optional[dict]:
    """``dict(momentum=, interval=)`` of the EMA of the run that saved an mmengine
    ``checkpoint`` (its EMA hook in the config its ``meta`` holds, mmengine's defaults
    for what the hook leaves out), or None: no config, no EMA hook, or an average not
    of :data:`FIXED_MOMENTUM_AVERAGES`."""
    from mmengine.model import ExponentialMovingAverage

    from mmsora.utils.trained_settings import keyword_defaults, trained_config
    config = trained_config(checkpoint)
    found = None if config is None or _not_from_scratch(config) else _ema_hook(config)
    if found is None:
        return None
    hook, cls = found
    if hook.get('begin_iter') or hook.get('begin_epoch'):  # (it followed the weights
        return None  # until then: its count says nothing of its start)
    kind = hook.get('ema_type', keyword_defaults(cls).get('ema_type'))
    if not isinstance(kind, str) or kind.rpartition('.')[2] not in FIXED_MOMENTUM_AVERAGES:
        return None
    # (FP32ExponentialMovingAverage and ShardedEMA take mmengine's defaults)
    defaults = keyword_defaults(ExponentialMovingAverage)
    return dict(momentum=hook.get('momentum', defaults['momentum']),
                interval=hook.get('interval', defaults['interval']))


def _not_from_scratch(config: dict) -> bool:
    """Whether the run started from trained weights (``load_from``: tools/train.py
    --load-from; ``model.pretrained_denoiser``): its EMA's first weights are those, not
    random ones, and a fine-tune's young EMA samples well."""
    model = config.get('model')
    return bool(config.get('load_from')) or (
        isinstance(model, dict) and bool(model.get('pretrained_denoiser')))


def _ema_hook(config: dict):
    """``(hook config, hook class)`` of the first EMA hook among a run config's
    ``custom_hooks``, or None. The config was read without its ``custom_imports``: a
    hook of the run's own modules, not registered here, is passed over."""
    from mmengine.hooks import EMAHook

    from mmsora.utils.cli import UserError
    from mmsora.utils.training_inputs import hook_class
    for hook in config.get('custom_hooks') or []:
        try:
            cls = hook_class(hook)
        except (UserError, KeyError, TypeError):  # (not registered; not a hook config)
            continue
        if isinstance(cls, type) and issubclass(cls, EMAHook):
            return hook, cls
    return None


def ema_updates(checkpoint: dict) -> Optional[int]:
    """The updates the run's EMA made (its ``steps``, which a resume carries on) as a
    loaded mmengine ``checkpoint`` records them in ``ema_state_dict`` (a DeepSpeed
    folder's, read for its EMA alone too:
    :func:`~mmsora.utils.zero_checkpoint.read_zero_checkpoint`). None where it does
    not record them."""
    steps = (checkpoint.get('ema_state_dict') or {}).get('steps')
    return None if steps is None else int(steps)


def young_ema_warning(checkpoint, source: str = '',
                      trained_option: Optional[str] = 'use_ema=False',
                      use: str = 'samples') -> Optional[str]:
    """The line that says the EMA weights of a loaded run ``checkpoint`` (read from
    ``source``) still hold more than :data:`MOSTLY_INITIAL` of their initial weights,
    by the run's own record (:func:`ema_updates`, :func:`ema_settings`), with what to
    do: ``trained_option`` (how the caller takes the trained weights; None where it
    has no way; ``use``: what it does with them, 'samples', 'exports') or training
    longer. None where the EMA has moved further, or where the checkpoint does not
    tell (a DiT / fast-DiT file, a plain state dict, a run whose config or EMA count
    is not recorded): not guessed."""
    if not isinstance(checkpoint, dict) or 'meta' not in checkpoint:
        return None
    settings = ema_settings(checkpoint)
    updates = None if settings is None else ema_updates(checkpoint)
    if updates is None:
        return None
    share = initial_share(updates, **settings)
    if share <= MOSTLY_INITIAL:
        return None
    every = f', interval {settings["interval"]}' if settings['interval'] > 1 else ''
    todo = (f'{trained_option} {use} the trained weights; or train longer'
            if trained_option else 'train longer')
    return (f'the EMA weights of {source} still hold {share:.0%} of their initial weights '
            f'after {updates} updates (momentum {settings["momentum"]:g}{every}): {todo}')

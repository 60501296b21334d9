"""Gradient accumulation as the hooks see it: how many micro-batches (Runner
iterations) make one optimizer step, and whether the iteration that just ran ended
with one.

mmengine's ``OptimWrapper`` (AMP and mmsora's autocast wrapper included) accumulates
``accumulative_counts`` micro-batches; under ``--deepspeed`` mmengine's wrapper calls
the engine's ``step()`` at every micro-batch and DeepSpeed steps at its own
``gradient_accumulation_steps`` boundary (``tools/train.py`` fills it from
``accumulative_counts``). Used by the EMA hooks (one update per optimizer step,
mmsora/engine/ema.py), by ``ResumeCheckHook`` (a resume keeps the global batch) and
by ``LossGuardHook`` (the loss logged once per optimizer step, its micro-batches' mean).
"""

__all__ = ['optimizer_stepped', 'accumulation_steps']


def _deepspeed_engine(runner):
    engine = getattr(getattr(runner, 'optim_wrapper', None), '_model', None)
    if hasattr(engine, 'micro_steps') and hasattr(engine, 'gradient_accumulation_steps'):
        return engine
    return None


def _managed(engine) -> bool:
    """DeepSpeed's own accumulation (the default); without it every ``step()`` is an
    optimizer step."""
    return getattr(engine, 'managed_gradient_accumulation', lambda: True)()


def _counting_wrapper(runner):
    """The run's ``OptimWrapper`` (AMP and mmsora's autocast wrapper included), which
    counts micro-batches; None for DeepSpeed's, several wrappers
    (``OptimWrapperDict``, which inherits ``should_update`` without its count) or
    none."""
    wrapper = getattr(runner, 'optim_wrapper', None)
    return wrapper if hasattr(wrapper, '_inner_count') else None


def accumulation_steps(runner) -> int:
    """Micro-batches per optimizer step (1 without accumulation, or without an
    optimizer wrapper that accumulates)."""
    engine = _deepspeed_engine(runner)
    if engine is not None:
        return int(engine.gradient_accumulation_steps()) if _managed(engine) else 1
    return int(getattr(_counting_wrapper(runner), '_accumulative_counts', 1))


def optimizer_stepped(runner) -> bool:
    """Whether the training step that just ran ended with an optimizer step: False
    after the first k-1 of k accumulated micro-batches. Read in ``after_train_iter``.

    ``OptimWrapper`` counts the micro-batches in ``backward()`` and then steps if
    ``should_update()``; nothing changes the count before ``after_train_iter``, so
    ``should_update()`` gives the same answer there (also at the run's last
    iteration, which steps whatever the count). DeepSpeed's engine adds one to
    ``micro_steps`` at the end of each ``step()`` and steps when the new count is a
    multiple of its accumulation; it never steps a part-filled window at the run's
    end. With ``managed_gradient_accumulation: false`` every ``step()`` is a step.
    Without either wrapper (none, or several) every iteration counts, as mmengine's
    hooks assume."""
    wrapper = _counting_wrapper(runner)
    if wrapper is not None:
        return bool(wrapper.should_update())
    engine = _deepspeed_engine(runner)
    if engine is not None:  # unmanaged: accumulation_steps is 1
        return engine.micro_steps % accumulation_steps(runner) == 0
    return True

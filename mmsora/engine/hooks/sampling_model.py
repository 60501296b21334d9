"""The model a sampling hook should draw from during training."""
from contextlib import contextmanager

from mmengine.hooks import EMAHook
from mmengine.model import is_model_wrapper

__all__ = ['sampling_model']


@contextmanager
def sampling_model(runner, use_ema: bool = True):
    """EMAHook's averaged model when it runs and ``use_ema``, else the trained model,
    unwrapped from the DDP / DeepSpeed wrapper.

    Every process enters it: an average that is not a copy of the module
    (``ShardedEMAHook``'s; under DeepSpeed ZeRO-1/2 partitioned over the processes,
    :class:`~mmsora.engine.zero_partition_ema.ZeroPartitionEMA`) is put into the
    module on entering (on every process: an all-gather) and the trained weights back,
    exactly, on leaving. (``--fsdp`` and ZeRO-3 refuse the sampling hooks: no process
    holds the whole model there.)
    """
    model = runner.model
    model = model.module if is_model_wrapper(model) else model
    ema = None
    if use_ema:
        for hook in runner.hooks:
            if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model'):
                ema = hook.ema_model
                break
    if ema is None:
        yield model
    elif hasattr(ema, 'module'):  # mmengine's averaged copy
        yield ema.module
    else:
        ema.swap()
        try:
            yield model
        finally:
            ema.swap()

"""The model a sampling hook should draw from during training."""
from mmengine.hooks import EMAHook
from mmengine.model import is_model_wrapper

__all__ = ['sampling_model']


def sampling_model(runner, use_ema: bool = True):
    """EMAHook's averaged model when it runs and ``use_ema``, else the trained model,
    unwrapped from the DDP wrapper. (``--fsdp`` refuses the sampling hooks: no process
    holds the whole model there.)"""
    if use_ema:
        for hook in runner.hooks:
            if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model'):
                return hook.ema_model.module
    model = runner.model
    return model.module if is_model_wrapper(model) else model

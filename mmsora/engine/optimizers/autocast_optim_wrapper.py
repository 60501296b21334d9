"""An optimizer wrapper that runs the forward pass under ``torch.autocast``.

mmengine's ``AmpOptimWrapper`` asserts a GPU. bf16 needs no loss scaling, so on the
CPU (and on GPUs, when scaling is not wanted) autocast alone is mixed precision:
parameters and optimizer state stay fp32 (master weights), matmuls run in bf16.
"""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper

from mmsora.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose ``optim_context`` autocasts to ``dtype`` on any device.

    Args:
        dtype: ``'bfloat16'`` (default) or ``'float16'`` (fp16 without a loss
            scaler underflows: use mmengine's ``AmpOptimWrapper`` on GPUs for it).
        device_type: ``'cpu'`` or ``'cuda'``; ``None`` picks cuda when available.
        **kwargs: Passed to ``OptimWrapper``.
    """

    def __init__(self, dtype='bfloat16', device_type=None, **kwargs):
        super().__init__(**kwargs)
        if dtype not in ('bfloat16', 'float16'):
            raise ValueError(f"dtype must be 'bfloat16' or 'float16', got {dtype!r}")
        self.cast_dtype = getattr(torch, dtype)
        self.device_type = device_type or ('cuda' if torch.cuda.is_available() else 'cpu')

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(
                device_type=self.device_type, dtype=self.cast_dtype):
            yield

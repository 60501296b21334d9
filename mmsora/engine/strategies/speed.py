"""Speed switches for training: ``torch.compile`` of the denoiser, TF32 matmuls on
Ampere and newer, fused AdamW on CUDA, and glibc's malloc kept from returning freed
memory on the CPU."""
import ctypes
import os
import platform
import sys
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmsora.registry import HOOKS

__all__ = ['CompileDenoiserHook', 'set_tf32', 'tf32_supported', 'prefer_fused_optimizer',
           'keep_freed_cpu_memory']


@HOOKS.register_module()
class CompileDenoiserHook(Hook):
    """Compile the denoiser with ``torch.compile`` before training (``--compile``).

    ``nn.Module.compile`` compiles in place, so parameter names, the state dict and
    checkpoints stay as they are (``torch.compile(module)`` would prefix every key
    with ``_orig_mod.``). Only the denoiser is compiled: the diffusion loss, the data
    preprocessor and the optimizer step run eagerly, as does sampling under
    ``torch.no_grad`` (the same compiled module; a first call there recompiles).

    Args:
        mode (str, optional): ``torch.compile`` mode, e.g. ``'max-autotune'``.
        dynamic (bool, optional): ``torch.compile``'s ``dynamic``.
        fullgraph (bool): Fail on graph breaks instead of falling back to Python.
        backend (str): ``torch.compile`` backend. Defaults to 'inductor'.
    """

    def __init__(self, mode: Optional[str] = None, dynamic: Optional[bool] = None,
                 fullgraph: bool = False, backend: str = 'inductor'):
        self.options = dict(mode=mode, dynamic=dynamic, fullgraph=fullgraph,
                            backend=backend)

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.denoiser.compile(**self.options)
        runner.logger.info(f'torch.compile: denoiser {type(model.denoiser).__name__} '
                           f'({self.options}); the first steps include compilation')


def tf32_supported() -> bool:
    """Whether the current CUDA device has TF32 tensor cores (Ampere, sm_80, or newer)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def set_tf32(enabled: bool) -> None:
    """Let float32 matmuls and convolutions use TF32 (10-bit mantissa inputs, fp32
    accumulation) on GPUs that have it; ``tools/train.py`` turns it on by default on
    Ampere and newer (``--no-tf32`` keeps full fp32). Ignored on CPU."""
    torch.set_float32_matmul_precision('high' if enabled else 'highest')
    torch.backends.cudnn.allow_tf32 = enabled


def prefer_fused_optimizer(optimizer_cfg: dict, device: str) -> dict:
    """``fused=True`` for torch's Adam / AdamW on CUDA (one kernel for the whole
    update instead of a loop over parameters) unless the config says otherwise
    (``optim_wrapper.optimizer.fused=False``, or ``foreach`` set)."""
    if (device == 'cuda' and optimizer_cfg.get('type') in ('Adam', 'AdamW')
            and 'fused' not in optimizer_cfg and 'foreach' not in optimizer_cfg):
        optimizer_cfg['fused'] = True
    return optimizer_cfg


# mallopt(3)'s parameters (<malloc.h>) and the environment that sets them instead.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_ENV = ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TOP_PAD_',
               'MALLOC_MMAP_MAX_')


def keep_freed_cpu_memory() -> bool:
    """Make glibc's malloc keep the memory a CPU training step frees for the next step.

    torch's CPU tensors come from malloc. By default glibc serves blocks above its
    mmap threshold (adaptive, at most 32 MiB) with freshly mapped pages and gives the
    top of its heap back to the system as it shrinks, so every step faults its
    activations in again: DiT-S/2 at batch 32 on 2 cores made 0.26-0.55 million page
    faults per step and its steps took 11-17% longer (docs/benchmarks.md). This sets the
    mmap threshold to 1 GiB and turns heap trimming off, as
    ``MALLOC_MMAP_THRESHOLD_=1073741824`` and ``MALLOC_TRIM_THRESHOLD_`` would. The
    peak memory stays about the same (+1% there); the process keeps it until it exits.

    The tools that run models on the CPU (train, infer, test, and benchmark for every
    model it times) and text2video (its frames) call it through
    ``mmsora.utils.cli.keep_freed_memory_on_cpu``; their ``--default-malloc`` leaves
    the allocator alone. Returns whether it was set:
    not on another C library (musl, macOS, Windows), nor when the environment already
    tunes glibc's malloc (a ``MALLOC_*_`` variable or ``glibc.malloc`` in
    ``GLIBC_TUNABLES``).
    """
    if not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc':
        return False
    if (any(name in os.environ for name in _MALLOC_ENV)
            or 'glibc.malloc' in os.environ.get('GLIBC_TUNABLES', '')):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    trim_set = mallopt(_M_TRIM_THRESHOLD, -1)  # SIZE_MAX to glibc: never trim
    return bool(mmap_set and trim_set)

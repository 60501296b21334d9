"""Which kernel computes attention: PyTorch's SDPA, flash-attn or xformers.

Every attention layer of the denoisers (``Attention``, ``MultiHeadCrossAttention``,
Stable Cascade's ``TemporalAttention``) calls :func:`attention` with its
``attn_backend``:

- ``'sdpa'``: ``torch.nn.functional.scaled_dot_product_attention``, which itself picks
  a fused kernel (flash / memory-efficient / cuDNN on GPU, a flash kernel on CPU).
  Always available, the only one that takes a mask.
- ``'flash_attn'``: the flash-attn package: FlashAttention-3 (``flash_attn_interface``)
  on Hopper GPUs for calls without dropout, else FlashAttention-2 (``flash_attn``):
  CUDA, fp16 / bf16, head size up to 256.
- ``'xformers'``: ``xformers.ops.memory_efficient_attention`` (CUDA).
- ``'auto'`` (default): flash-attn, then xformers, where they import and the call suits
  them (CUDA tensors, no mask; flash-attn also needs fp16 / bf16 and head size <= 256);
  SDPA otherwise. A package that fails to import (a wheel built for another torch)
  counts as absent. On a machine with neither package, and on CPU, ``'auto'`` is SDPA.

Set it for a whole model with ``LatentDiffusion(attn_backend=...)`` (config key
``model.attn_backend``) or :func:`set_attention_backend`. A masked call (text
cross-attention with padding) always goes to SDPA; an explicit ``'flash_attn'`` or
``'xformers'`` that is not installed is an error, not a silent fallback.
"""
import functools
import importlib
import importlib.util
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['ATTENTION_BACKENDS', 'attention', 'resolve_backend', 'set_attention_backend',
           'installed_backends']

ATTENTION_BACKENDS = ('auto', 'sdpa', 'flash_attn', 'xformers')
_HALF = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _installed(module: str) -> bool:
    """Whether ``module`` imports (tried once per process). A wheel built for another
    torch or CUDA often fails at import: that counts as not installed."""
    if importlib.util.find_spec(module.split('.')[0]) is None:
        return False
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001  (ImportError, OSError of a bad .so, ...)
        return False


def _cuda_major() -> int:
    """Compute capability major of the current GPU (9: Hopper), 0 without CUDA."""
    return torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 0


def installed_backends() -> list:
    """The backends usable here: ``'sdpa'`` and whichever packages are installed."""
    found = ['sdpa']
    if _installed('flash_attn_interface') or _installed('flash_attn'):
        found.append('flash_attn')
    if _installed('xformers.ops'):
        found.append('xformers')
    return found


def check_backend(name: str, installed: bool = False) -> str:
    """``name`` if it is a known backend, else a ValueError listing them; with
    ``installed`` also a ValueError when it names a package this machine lacks."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f'unknown attention backend {name!r}; choose one of '
                         f'{", ".join(ATTENTION_BACKENDS)}')
    if installed and name not in ('auto', 'sdpa') and name not in installed_backends():
        pkg = 'flash-attn' if name == 'flash_attn' else 'xformers'
        raise ValueError(f'attention backend {name!r} asked for, but {pkg} is not '
                         "installed; use 'auto' or 'sdpa'")
    return name


def _flash_module(device_type: str, dropout_p: float):
    """The flash-attn module for a call: FlashAttention-3 (``flash_attn_interface``:
    Hopper GPUs, no dropout) when it fits, else FlashAttention-2 (``flash_attn``);
    None when neither is installed or fits."""
    fa3_fits = dropout_p == 0 and (device_type != 'cuda' or _cuda_major() >= 9)
    if fa3_fits and _installed('flash_attn_interface'):
        return importlib.import_module('flash_attn_interface')
    if _installed('flash_attn'):
        return importlib.import_module('flash_attn')
    return None


def resolve_backend(requested: str, device_type: str, dtype: torch.dtype, head_dim: int,
                    masked: bool, dropout_p: float) -> str:
    """The kernel a call runs on: ``'sdpa'``, ``'flash_attn'`` or ``'xformers'``."""
    check_backend(requested)
    if masked or requested == 'sdpa':
        return 'sdpa'
    if requested != 'auto':
        return check_backend(requested, installed=True)
    if device_type != 'cuda':
        return 'sdpa'
    if (dtype in _HALF and head_dim <= 256
            and _flash_module(device_type, dropout_p) is not None):
        return 'flash_attn'
    if 'xformers' in installed_backends():
        return 'xformers'
    return 'sdpa'


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              backend: str = 'auto') -> torch.Tensor:
    """Scaled dot-product attention, softmax scale ``1 / sqrt(head_dim)``.

    Args:
        q, k, v (Tensor): (N, H, T, Dh) as SDPA takes them (k, v: (N, H, L, Dh)).
        attn_mask (Tensor, optional): Boolean, broadcastable to (N, H, T, L), true
            where a query may attend; only SDPA takes one.
        dropout_p (float): Attention dropout (0 in eval).
        backend (str): One of :data:`ATTENTION_BACKENDS`.

    Returns:
        Tensor: (N, H, T, Dh); from flash-attn / xformers a transposed view of their
        (N, T, H, Dh) output, so the caller's ``transpose(1, 2).reshape`` is free.
    """
    kind = resolve_backend(backend, q.device.type, q.dtype, q.shape[-1],
                           attn_mask is not None, dropout_p)
    if kind == 'sdpa':
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                              dropout_p=dropout_p)
    # Both packages take (N, T, H, Dh): transposing split_heads' views back is free.
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    if kind == 'flash_attn':
        module = _flash_module(q.device.type, dropout_p)
        if module is None:  # only FlashAttention-3, and the call has dropout
            raise RuntimeError('FlashAttention-3 has no attention dropout (and '
                               'FlashAttention-2 is not installed); use '
                               "attn_backend='sdpa' or no attention dropout")
        if module.__name__ == 'flash_attn_interface':
            out = module.flash_attn_func(q, k, v)
        else:
            out = module.flash_attn_func(q, k, v, dropout_p=dropout_p)
        out = out[0] if isinstance(out, tuple) else out  # some FA3 versions add the LSE
    else:
        xops = importlib.import_module('xformers.ops')
        out = xops.memory_efficient_attention(q, k, v, p=dropout_p)
    return out.transpose(1, 2)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Set ``attn_backend`` on every attention layer of ``model``; returns ``model``.
    A backend whose package is not installed is refused now (it was a RuntimeError
    traceback at the first forward, after the Runner's start-up)."""
    check_backend(backend, installed=True)
    for module in model.modules():
        if hasattr(module, 'attn_backend'):
            module.attn_backend = backend
    return model

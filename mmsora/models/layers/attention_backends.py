"""Which kernel computes attention: PyTorch's SDPA, flash-attn or xformers.

Every attention layer of the denoisers (``Attention``, ``MultiHeadCrossAttention``,
Stable Cascade's ``TemporalAttention``) calls :func:`attention` with its
``attn_backend``:

- ``'sdpa'``: ``torch.nn.functional.scaled_dot_product_attention``, which itself picks
  a fused kernel (flash / memory-efficient / cuDNN on GPU, a flash kernel on CPU).
  Always available, the only one that takes a mask.
- ``'flash_attn'``: the flash-attn package (``flash_attn_interface``, FlashAttention-3
  on Hopper, when installed; else ``flash_attn``, FlashAttention-2): CUDA, fp16 / bf16,
  head size up to 256.
- ``'xformers'``: ``xformers.ops.memory_efficient_attention`` (CUDA).
- ``'auto'`` (default): flash-attn, then xformers, where installed and the call suits
  them (CUDA tensors, no mask; flash-attn also needs fp16 / bf16, head size <= 256 and,
  for FlashAttention-3, no dropout); SDPA otherwise. On a machine with neither package,
  and on CPU, ``'auto'`` is SDPA.

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
    """Whether ``module`` can be imported (looked up once per process)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_backends() -> list:
    """The backends usable here: ``'sdpa'`` and whichever packages are installed."""
    found = ['sdpa']
    if _installed('flash_attn_interface') or _installed('flash_attn'):
        found.append('flash_attn')
    if _installed('xformers'):
        found.append('xformers')
    return found


def check_backend(name: str) -> str:
    """``name`` if it is a known backend, else a ValueError listing them."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f'unknown attention backend {name!r}; choose one of '
                         f'{", ".join(ATTENTION_BACKENDS)}')
    return name


def _flash_module():
    """FlashAttention-3's interface when installed, else FlashAttention-2's package."""
    for name in ('flash_attn_interface', 'flash_attn'):
        if _installed(name):
            return importlib.import_module(name)
    return None


def resolve_backend(requested: str, device_type: str, dtype: torch.dtype, head_dim: int,
                    masked: bool, dropout_p: float) -> str:
    """The kernel a call runs on: ``'sdpa'``, ``'flash_attn'`` or ``'xformers'``."""
    check_backend(requested)
    if masked or requested == 'sdpa':
        return 'sdpa'
    if requested != 'auto':
        if requested not in installed_backends():
            pkg = 'flash-attn' if requested == 'flash_attn' else 'xformers'
            raise RuntimeError(f'attention backend {requested!r} asked for, but {pkg} is '
                               "not installed; use 'auto' or 'sdpa'")
        return requested
    if device_type != 'cuda':
        return 'sdpa'
    found = installed_backends()
    fa3 = _installed('flash_attn_interface')
    if ('flash_attn' in found and dtype in _HALF and head_dim <= 256
            and not (fa3 and dropout_p > 0)):
        return 'flash_attn'
    if 'xformers' in found:
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
        module = _flash_module()
        if module.__name__ == 'flash_attn_interface':  # FlashAttention-3: no dropout
            if dropout_p > 0:
                raise RuntimeError('FlashAttention-3 has no attention dropout; use '
                                   "attn_backend='sdpa' or no attention dropout")
            out = module.flash_attn_func(q, k, v)
        else:
            out = module.flash_attn_func(q, k, v, dropout_p=dropout_p)
        out = out[0] if isinstance(out, tuple) else out  # some FA3 versions add the LSE
    else:
        xops = importlib.import_module('xformers.ops')
        out = xops.memory_efficient_attention(q, k, v, p=dropout_p)
    return out.transpose(1, 2)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Set ``attn_backend`` on every attention layer of ``model``; returns ``model``."""
    check_backend(backend)
    for module in model.modules():
        if hasattr(module, 'attn_backend'):
            module.attn_backend = backend
    return model

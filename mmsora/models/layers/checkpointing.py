"""Activation checkpointing of the denoisers' blocks: the ``grad_checkpointing`` knob.

- ``False`` / ``0``: nothing recomputed; every block keeps what its backward needs.
- ``True`` / ``k``: every block, or every k-th block (0, k, 2k, ...), keeps only its
  inputs and runs its forward again in the backward pass: the least memory, one more
  forward of those blocks (about a third more compute for the whole step).
- ``'selective'``: every block keeps the outputs of its matrix products, convolutions
  and attention kernels (without dropout), and recomputes the rest in the backward
  pass: norms, adaLN modulation, activations, residual adds, casts and copies (PyTorch's
  selective activation checkpointing, as torchtitan's op-level policy). No product is
  computed twice, so it costs a few elementwise passes per block, and a DiT block keeps
  about half of what it kept (``docs/benchmarks.md``).
"""
from functools import partial
from typing import Optional, Union

import torch
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,
                                    create_selective_checkpoint_contexts)

__all__ = ['check_checkpoint_every', 'checkpointed_call', 'SAVED_OPS']

_aten = torch.ops.aten
# The ops whose outputs selective checkpointing keeps: those costly to recompute.
SAVED_OPS = frozenset({
    _aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm, _aten.convolution,
    _aten._scaled_dot_product_flash_attention,
    _aten._scaled_dot_product_flash_attention_for_cpu,
    _aten._scaled_dot_product_efficient_attention,
    _aten._scaled_dot_product_cudnn_attention,
})
# Attention kernels of the optional backends (flash-attn, xformers), by op namespace.
_SAVED_NAMESPACES = ('flash_attn', 'xformers')


def _has_dropout(func, args, kwargs) -> bool:
    """Whether an attention call drops out (its ``dropout_p`` / ``p`` argument > 0)."""
    for i, arg in enumerate(func._schema.arguments):
        if arg.name in ('dropout_p', 'p'):
            value = kwargs.get(arg.name, args[i] if i < len(args) else arg.default_value)
            return bool(value)
    return False


def _selective_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """Keep the products' and attention's outputs; recompute everything else.

    The checkpoint restores the RNG state before recomputing, so the random ops
    recomputed (dropout masks) draw what they drew in the forward as long as every op
    that drew before them runs again too: an attention kernel with dropout is
    recomputed, not kept. (Random ops cannot be kept instead: dropout fills its mask in
    place, which a kept tensor must not be.)"""
    kept = (func.overloadpacket in SAVED_OPS
            or func.namespace.startswith(_SAVED_NAMESPACES))
    if kept and not _has_dropout(func, args, kwargs):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE = partial(create_selective_checkpoint_contexts, _selective_policy)


def check_checkpoint_every(grad_checkpointing: Union[bool, int, str],
                           depth: Optional[int] = None) -> Union[bool, int, str]:
    """Validate a ``grad_checkpointing`` argument: False/0 (off), True (every block),
    an int k >= 1 (every k-th block, i.e. blocks 0, k, 2k, ...) or ``'selective'``.
    With the model's ``depth`` (its number of blocks) a k above it is refused: it
    recomputes block 0 alone, as k = depth does."""
    if isinstance(grad_checkpointing, bool) or grad_checkpointing == 'selective':
        return grad_checkpointing
    if not isinstance(grad_checkpointing, int) or grad_checkpointing < 0:
        raise ValueError("grad_checkpointing must be True/False, 'selective' or a block "
                         'interval k >= 0 (checkpoint every k-th block), got '
                         f'{grad_checkpointing!r}')
    if depth is not None and grad_checkpointing > depth:
        raise ValueError(f'grad_checkpointing={grad_checkpointing} is more than the '
                         f'{depth} blocks (it would recompute block 0 alone): use 0 (off), '
                         f"1 (every block) to {depth} (every k-th block) or 'selective'")
    return grad_checkpointing


def checkpointed_call(grad_checkpointing: Union[bool, int, str], index: int, block,
                      *args):
    """``block(*args)``, the ``index``-th block, checkpointed as ``grad_checkpointing``
    (checked by :func:`check_checkpoint_every`) asks; plainly when no gradient is
    recorded (sampling)."""
    if not grad_checkpointing or not torch.is_grad_enabled():
        return block(*args)
    if grad_checkpointing == 'selective':
        return checkpoint(block, *args, use_reentrant=False, context_fn=_SELECTIVE)
    if index % int(grad_checkpointing) == 0:
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)

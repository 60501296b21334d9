"""Model FLOPs of a denoiser and the peak of the card they run on, for MFU.

FLOPs are counted from the operators' shapes by torch's ``FlopCounterMode`` over one
forward pass: matrix products, convolutions and attention, 2 FLOPs per
multiply-accumulate; norms, activations, softmax and other elementwise work are left
out, as the DiT paper counts (its "Gflops" are multiply-accumulates: DiT-XL/2 at 256
px is 118.6 of them, 237.2 GFLOPs here; ``tests/test_utils/test_flops.py`` checks the
count against :func:`mmsora.models.dit_flops`). A training step is taken as three
forward passes (the backward pass costs two), whatever activation checkpointing
recomputes: model FLOPs, as MFU is defined (PaLM, Chowdhery et al. 2022, app. B).

Peaks are dense tensor-core TFLOP/s from NVIDIA's datasheets and architecture
whitepapers; a GeForce card's are those with float32 accumulation, which PyTorch
uses. ``fp32`` means TF32 tensor cores where they are on (``tools/train.py``'s
default on Ampere and newer), else plain float32.
"""
import contextlib
from typing import Optional

import torch

__all__ = ['forward_flops', 'PEAK_TFLOPS', 'peak_tflops']

# name fragment (matched in order against torch.cuda.get_device_name()) ->
# {precision: dense TFLOP/s}; 'fp32' is the plain float32 peak, 'tf32' the TF32 one.
PEAK_TFLOPS = (
    ('H200 NVL', dict(bf16=835.0, fp16=835.0, tf32=417.5, fp32=60.0)),
    ('H200', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),
    ('H100 NVL', dict(bf16=835.0, fp16=835.0, tf32=417.5, fp32=60.0)),
    ('H100 PCIe', dict(bf16=756.5, fp16=756.5, tf32=378.0, fp32=51.2)),
    ('H100', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),  # SXM
    ('H800 PCIe', dict(bf16=756.5, fp16=756.5, tf32=378.0, fp32=51.2)),
    ('H800', dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9)),  # SXM
    ('A100', dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5)),
    ('A800', dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5)),
    ('L40S', dict(bf16=362.1, fp16=362.1, tf32=183.2, fp32=91.6)),
    ('RTX 6000 Ada', dict(bf16=364.2, fp16=364.2, tf32=182.1, fp32=91.1)),
    ('RTX A6000', dict(bf16=154.8, fp16=154.8, tf32=77.4, fp32=38.7)),
    ('RTX 4090', dict(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6)),
    ('RTX 3090', dict(bf16=71.0, fp16=71.0, tf32=35.6, fp32=35.6)),
    ('V100-PCIE', dict(fp16=112.0, fp32=14.0)),  # no bf16, no TF32
    ('V100', dict(fp16=125.0, fp32=15.7)),  # SXM2
)


def peak_tflops(device_name: str, precision: str, tf32: bool = True) -> Optional[float]:
    """The dense peak TFLOP/s of a card for ``precision`` (``'bf16'``, ``'fp16'`` or
    ``'fp32'``; fp32 counts TF32's peak when ``tf32``), or None when the card is not
    in :data:`PEAK_TFLOPS` (give ``--peak-tflops`` then)."""
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            if precision == 'fp32' and tf32 and 'tf32' in peaks:
                return peaks['tf32']
            return peaks.get(precision)
    return None


def forward_flops(fn, *args, attention_model: Optional[torch.nn.Module] = None,
                  **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)``, one forward pass without gradients.

    Attention is counted through PyTorch's ``scaled_dot_product_attention``:
    ``attention_model``'s attention layers are switched to it for the count (the
    flash-attn and xformers kernels are not operators torch can count) and back.
    """
    from torch.utils.flop_counter import FlopCounterMode
    # torch counts SDPA's CUDA kernels; its CPU flash kernel is counted alike here
    cpu_sdpa = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    custom = {cpu_sdpa: _sdpa_flops} if cpu_sdpa is not None else {}
    with contextlib.ExitStack() as stack:
        if attention_model is not None:
            stack.enter_context(_sdpa_attention(attention_model))
        counter = stack.enter_context(FlopCounterMode(display=False,
                                                      custom_mapping=custom))
        stack.enter_context(torch.no_grad())
        fn(*args, **kwargs)
    return counter.get_total_flops()


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@contextlib.contextmanager
def _sdpa_attention(model: torch.nn.Module):
    """Every attention layer of ``model`` (those with an ``attn_backend``, as
    :func:`~mmsora.models.layers.set_attention_backend` finds them) on SDPA."""
    layers = [m for m in model.modules() if hasattr(m, 'attn_backend')]
    before = [m.attn_backend for m in layers]
    for m in layers:
        m.attn_backend = 'sdpa'
    try:
        yield
    finally:
        for m, backend in zip(layers, before):
            m.attn_backend = backend

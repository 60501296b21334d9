"""mmsora.utils.flops: FLOPs counted from a forward pass's operators, and the peak
table behind tools/benchmark.py's MFU."""
import pytest
import torch

from mmsora.models import DiT, VideoDiT, dit_flops, dit_preset
from mmsora.utils.flops import forward_flops, peak_tflops


@pytest.mark.parametrize('name,size', [('DiT-S/8', 16), ('DiT-S/2', 8)])
def test_dit_count_is_the_papers_macs_times_two(name, size):
    """The counter agrees with the analytic DiT count (the paper's Gflops are MACs:
    DiT-XL/2 at 256 px is 118.6), per sample, whatever the batch."""
    arch = dit_preset(name, input_size=size, num_classes=10)
    model = DiT(**arch).eval()
    for n in (1, 3):
        x, t, y = torch.randn(n, 4, size, size), torch.zeros(n).long(), torch.zeros(n).long()
        assert forward_flops(model, x, t, y=y) == n * 2 * dit_flops(**arch)


def test_video_count_grows_with_frames_and_counts_attention():
    """A latte VideoDiT: the spatial blocks' work grows with the frames, the temporal
    blocks' attention with the frames squared; the attention layers are counted on
    SDPA whatever backend they were set to, which is restored."""
    model = VideoDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
                     num_heads=2, num_classes=10, num_frames=8).eval()

    def count(frames):
        x = torch.randn(1, 4, frames, 8, 8)
        return forward_flops(model, x, torch.zeros(1).long(), y=torch.zeros(1).long(),
                             attention_model=model)

    layers = [m for m in model.modules() if hasattr(m, 'attn_backend')]
    for m in layers:
        m.attn_backend = 'no-such-kernel'  # would fail if it were called
    two, four, eight = count(2), count(4), count(8)
    assert {m.attn_backend for m in layers} == {'no-such-kernel'}
    # f(T) = c + a T + b T^2: per-token work and spatial attention are linear in the
    # frames; temporal attention (Q K^T and A V, 2 T^2 D FLOPs each per patch
    # position) gives b = 4 P D. With T = 2, 4, 8 the differences leave 24 b.
    patches, width = (8 // 2) ** 2, 32
    assert (eight - four) - 2 * (four - two) == 24 * 4 * patches * width


def test_peak_table():
    assert peak_tflops('NVIDIA H100 80GB HBM3', 'bf16') == 989.4
    assert peak_tflops('NVIDIA H100 PCIe', 'bf16') == 756.5
    assert peak_tflops('NVIDIA H200 NVL', 'fp16') == 835.0
    assert peak_tflops('NVIDIA H200', 'bf16') == 989.4
    assert peak_tflops('NVIDIA A100-SXM4-80GB', 'fp32') == 156.0  # TF32
    assert peak_tflops('NVIDIA A100-SXM4-80GB', 'fp32', tf32=False) == 19.5
    assert peak_tflops('NVIDIA GeForce RTX 4090', 'bf16') == 165.2
    assert peak_tflops('NVIDIA RTX A6000', 'bf16') == 154.8
    assert peak_tflops('Tesla V100-SXM2-32GB', 'bf16') is None  # no bf16 on Volta
    assert peak_tflops('Tesla V100-SXM2-32GB', 'fp32') == 15.7  # no TF32 either
    assert peak_tflops('AMD Instinct MI300X', 'bf16') is None

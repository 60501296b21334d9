"""adaLN modulation, as in DiT (Peebles & Xie, "Scalable Diffusion Models with
Transformers", ICCV 2023, https://arxiv.org/abs/2212.09748)."""
import torch


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Scale and shift tokens ``x`` (N, T, D) by per-sample ``shift``/``scale`` (N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

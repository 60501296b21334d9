"""A small convolutional denoiser: the contract LatentDiffusion relies on (README,
"Your own modules"), in about fifty lines."""
import math

import torch
from torch import nn

from mmsora.registry import MODELS


def timestep_embedding(t, dim):
    """Sinusoidal features of the timesteps ``t`` (N,): (N, dim)."""
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


@MODELS.register_module()
class TinyConvDenoiser(nn.Module):
    """``forward(x, t, y)`` -> the objective's prediction, shaped like ``x`` (twice its
    channels with ``learn_sigma``: the variance too, as DiT's).

    The attributes LatentDiffusion checks against the config: ``in_channels``,
    ``num_classes`` (label ``num_classes`` is the null row of guidance) and
    ``learn_sigma``. Dropping labels to the null row in training is the denoiser's
    job (``class_dropout_prob``): without it there is no unconditional model to guide.
    """

    def __init__(self, in_channels=3, width=32, num_classes=4, class_dropout_prob=0.1,
                 learn_sigma=True):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.learn_sigma, self.class_dropout_prob = learn_sigma, class_dropout_prob
        self.width = width
        self.label = nn.Embedding(num_classes + 1, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(),
                                                  nn.Conv2d(width, width, 3, padding=1))
                                    for _ in range(3)])
        self.out = nn.Conv2d(width, in_channels * (2 if learn_sigma else 1), 3, padding=1)

    def forward(self, x, t, y):
        if self.training and self.class_dropout_prob > 0:
            drop = torch.rand(len(y), device=y.device) < self.class_dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        cond = self.time(timestep_embedding(t, self.width)) + self.label(y)
        h = self.inp(x) + cond[:, :, None, None]
        return self.out(h + self.body(h))

    def forward_with_cfg(self, x, t, y, cfg_scale):
        """Guided output for a doubled batch: conditional half first, the null label
        in the second half; both halves get the guided prediction (the variance, when
        learned, is the conditional one)."""
        half = x[:len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        eps, rest = out[:, :self.in_channels], out[:, self.in_channels:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)

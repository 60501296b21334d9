"""Tiny random feature extractors with the contracts of the real ones (tests only).

Configs of subprocess tests load this module through ``custom_imports``.
"""
import torch
import torch.nn as nn

from mmsora.registry import MODELS


@MODELS.register_module(force=True)
class TinyImageExtractor(nn.Module):
    """uint8 (N, 3, H, W) -> ``features`` (N, dim) and ``logits`` (N, num_classes)."""

    def __init__(self, dim=8, num_classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.fc = nn.Linear(dim, num_classes)

    @torch.no_grad()
    def forward(self, images):
        assert images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3
        x = images.float() / 127.5 - 1
        features = torch.tanh(self.conv(x)).mean(dim=(2, 3))
        return dict(features=features, logits=self.fc(features) * 4)


@MODELS.register_module(force=True)
class TinyVideoExtractor(nn.Module):
    """uint8 (N, 3, T, H, W) -> ``features`` (N, dim)."""

    def __init__(self, dim=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv3d(3, dim, 3, padding=1)

    @torch.no_grad()
    def forward(self, videos):
        assert videos.dtype == torch.uint8 and videos.dim() == 5 and videos.shape[1] == 3
        return dict(features=torch.tanh(self.conv(videos.float() / 127.5 - 1)).mean(dim=(2, 3, 4)))

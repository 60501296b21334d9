"""A dataset of one's own: coloured blobs drawn from the item's index (nothing to
download). Items are what LatentDiffusion's batch takes: ``latents`` (here the
pictures themselves, in [-1, 1]: the config has no VAE), ``labels`` and
``sample_idx`` (lets the loss guard name an item)."""
import numpy as np
import torch
from torch.utils.data import Dataset

from mmsora.registry import DATASETS

COLOURS = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], dtype=np.float32)


@DATASETS.register_module()
class ColourBlobs(Dataset):
    """``num_samples`` pictures of ``size`` x ``size``: one blob a picture, its colour
    the class (``num_classes`` <= 4), its place and width drawn from ``seed`` and the
    index, so an item is the same in every worker and every epoch."""

    def __init__(self, num_samples=1024, size=16, num_classes=4, seed=0):
        if not 1 <= num_classes <= len(COLOURS):
            raise ValueError(f'num_classes must be in [1, {len(COLOURS)}], got {num_classes}')
        self.num_samples, self.size = num_samples, size
        self.num_classes, self.seed = num_classes, seed

    def __len__(self):
        return self.num_samples

    def __getitem__(self, idx):
        rng = np.random.default_rng([self.seed, idx])
        label = int(idx % self.num_classes)
        cy, cx = rng.uniform(0.25, 0.75, size=2) * self.size
        sigma = rng.uniform(0.1, 0.2) * self.size
        yy, xx = np.mgrid[:self.size, :self.size]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        picture = -1 + blob[None] * (COLOURS[label][:, None, None] + 1)  # black ground
        return dict(latents=torch.from_numpy(picture.astype(np.float32)), labels=label,
                    sample_idx=idx)

"""Synthetic class-conditional pictures and clips, generated at run time (the demos' data).

Each class is a coloured shape on a dark background, with a little random jitter of
position, size and brightness, so a model must learn both colour and shape. The jitter
is kept small so that a tiny model learns the shapes in minutes on a CPU. Nothing is
downloaded, and the same ``seed`` always gives the same dataset.
"""
import numpy as np
import torch
from torch.utils.data import Dataset

from mmsora.registry import DATASETS

__all__ = ['SyntheticShapesDataset', 'SyntheticMovingShapesDataset', 'SHAPE_CLASSES',
           'render_moving_shape']

# name, RGB colour in [-1, 1]
SHAPE_CLASSES = (
    ('red disk', (0.9, -0.8, -0.8)),
    ('green square', (-0.8, 0.9, -0.8)),
    ('blue ring', (-0.8, -0.6, 0.9)),
    ('yellow cross', (0.9, 0.9, -0.8)),
)
BACKGROUND = -0.7


def _shape_mask(kind, size, cy, cx, radius):
    """Boolean (size, size) mask of one shape centred at (cy, cx)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if kind == 0:                                   # disk
        return dy ** 2 + dx ** 2 <= radius ** 2
    if kind == 1:                                   # square
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    if kind == 2:                                   # ring
        r2 = dy ** 2 + dx ** 2
        return (r2 <= radius ** 2) & (r2 >= (radius * 0.55) ** 2)
    half = max(radius * 0.3, 1.0)                   # cross
    arm = radius * 1.05
    return ((np.abs(dy) <= half) & (np.abs(dx) <= arm)) | \
           ((np.abs(dx) <= half) & (np.abs(dy) <= arm))


def _paint(label, size, centres, radius, colour, rng):
    """(3, T, size, size) frames with the shape at each of ``centres`` (T, 2)."""
    frames = np.full((3, len(centres), size, size), BACKGROUND, np.float32)
    for t, (cy, cx) in enumerate(centres):
        frames[:, t, _shape_mask(label, size, cy, cx, radius)] = colour[:, None]
    frames += rng.normal(0, 0.03, frames.shape).astype(np.float32)
    return np.clip(frames, -1, 1)


def render_shape(label, size, rng):
    """One (3, size, size) float32 picture of class ``label`` in [-1, 1]."""
    radius = rng.uniform(0.3, 0.36) * size
    centre = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    colour = np.asarray(SHAPE_CLASSES[label][1], np.float32) * rng.uniform(0.85, 1.0)
    return _paint(label, size, centre[None], radius, colour, rng)[:, 0]


# Direction of motion of each class (radians; image y points down): right, down,
# left, up, so the class decides how the shape moves as well as how it looks.
MOTION_ANGLES = (0.0, np.pi / 2, np.pi, -np.pi / 2)


def render_moving_shape(label, size, num_frames, rng, speed=(0.12, 0.16)):
    """One (3, T, size, size) clip of class ``label``: the shape crosses the middle of
    the frame in a straight line at constant speed (a fraction of ``size`` per frame)
    in its class's direction (within 15 degrees). Returns the clip and its (T, 2)
    centres (y, x)."""
    radius = rng.uniform(0.26, 0.3) * size
    angle = MOTION_ANGLES[label] + rng.uniform(-1, 1) * np.pi / 12
    step = rng.uniform(*speed) * size * np.array([np.sin(angle), np.cos(angle)])
    offsets = (np.arange(num_frames) - (num_frames - 1) / 2)[:, None] * step
    centres = size / 2 + rng.uniform(-0.05, 0.05, size=2) * size + offsets
    colour = np.asarray(SHAPE_CLASSES[label][1], np.float32) * rng.uniform(0.85, 1.0)
    return _paint(label, size, centres, radius, colour, rng), centres


@DATASETS.register_module()
class SyntheticShapesDataset(Dataset):
    """Coloured shapes, one class per shape, as pixel-space "latents".

    Items are ``{'latents': (3, size, size) float tensor in [-1, 1], 'labels': int}``,
    the same contract as the latent datasets, so a model trains on them directly.

    Args:
        num_samples: Number of pictures (classes are balanced).
        size: Side length in pixels.
        num_classes: How many of the shape classes to use (at most 4).
        seed: Seed of the generator; the dataset is a pure function of it.
    """

    def __init__(self, num_samples=2048, size=16, num_classes=4, seed=0):
        if not 1 <= num_classes <= len(SHAPE_CLASSES):
            raise ValueError(f'num_classes must be in [1, {len(SHAPE_CLASSES)}], '
                             f'got {num_classes}')
        if num_samples < 1 or size < 4:
            raise ValueError(f'need num_samples >= 1 and size >= 4, got {num_samples}, {size}')
        rng = np.random.default_rng(seed)
        self.labels = np.arange(num_samples) % num_classes
        self.images = np.stack([render_shape(int(k), size, rng) for k in self.labels])
        self.metainfo = dict(classes=[name for name, _ in SHAPE_CLASSES[:num_classes]])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return dict(latents=torch.from_numpy(self.images[idx]), labels=int(self.labels[idx]),
                    sample_idx=idx)


@DATASETS.register_module()
class SyntheticMovingShapesDataset(Dataset):
    """Clips of one coloured shape moving in a straight line, one class per shape.

    The video demo's data: a model must learn colour, shape and direction of motion
    per class (red disks move right, green squares down, blue rings left, yellow
    crosses up), and that the shape keeps its form while it moves steadily. Items are
    ``{'latents': (3, T, size, size) float tensor in [-1, 1], 'labels': int}``.

    Args:
        num_samples: Number of clips (classes are balanced).
        size: Side length in pixels.
        num_frames: Frames per clip.
        num_classes: How many of the shape classes to use (at most 4).
        seed: Seed of the generator; the dataset is a pure function of it.
    """

    def __init__(self, num_samples=1024, size=16, num_frames=4, num_classes=4, seed=0):
        if not 1 <= num_classes <= len(SHAPE_CLASSES):
            raise ValueError(f'num_classes must be in [1, {len(SHAPE_CLASSES)}], '
                             f'got {num_classes}')
        if num_samples < 1 or size < 4 or num_frames < 1:
            raise ValueError(f'need num_samples >= 1, size >= 4 and num_frames >= 1, got '
                             f'{num_samples}, {size}, {num_frames}')
        rng = np.random.default_rng(seed)
        self.labels = np.arange(num_samples) % num_classes
        clips = [render_moving_shape(int(k), size, num_frames, rng) for k in self.labels]
        self.clips = np.stack([c for c, _ in clips])
        self.centres = np.stack([c for _, c in clips])
        self.metainfo = dict(classes=[name for name, _ in SHAPE_CLASSES[:num_classes]])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return dict(latents=torch.from_numpy(self.clips[idx]), labels=int(self.labels[idx]),
                    sample_idx=idx)

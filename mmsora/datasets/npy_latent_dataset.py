"""Reads latents in fast-DiT's per-file ``.npy`` layout, unchanged.

fast-DiT (https://github.com/chuanyangjin/fast-DiT, ``extract_features.py``) saves one
file per image: ``features_dir/N.npy`` holding ``vae.encode(x).latent_dist.sample()
.mul_(0.18215)`` of shape ``(1, 4, H/8, W/8)`` (float32; the image was randomly
flipped before encoding) and ``labels_dir/N.npy`` holding the class id, shape ``(1,)``.
"""
import os
import os.path as osp

import numpy as np
import torch
from torch.utils.data import Dataset

from mmsora.registry import DATASETS
from .utils import natural_sort_key

__all__ = ['NpyLatentDataset', 'list_npy_pairs']


def _list_npy(folder, what):
    """Sorted ``.npy`` names of ``folder``; one-line errors when missing or empty."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'{what} {folder!r} does not exist or is not a directory')
    names = sorted((n for n in os.listdir(folder) if n.endswith('.npy')), key=natural_sort_key)
    if not names:
        raise ValueError(f'{what} {folder!r} holds no .npy files')
    return names


def list_npy_pairs(features_dir, labels_dir):
    """Matching ``(feature_path, label_path)`` pairs of a fast-DiT folder pair.

    Files are sorted by their numeric index (``0.npy, 1.npy, ..., 10.npy``), and every
    feature file must have a label file of the same name.
    """
    feats = _list_npy(features_dir, 'features_dir')
    labels = _list_npy(labels_dir, 'labels_dir')
    if feats != labels:
        missing = sorted(set(feats) - set(labels), key=natural_sort_key)
        extra = sorted(set(labels) - set(feats), key=natural_sort_key)
        if missing:
            msg = f'feature file {osp.join(features_dir, missing[0])!r} has no label file'
        else:
            msg = f'label file {osp.join(labels_dir, extra[0])!r} has no feature file'
        raise ValueError(f'{msg} ({len(feats)} feature files, {len(labels)} label files)')
    return [(osp.join(features_dir, n), osp.join(labels_dir, n)) for n in feats]


def load_npy(path, index):
    """``np.load`` without pickles; a one-line error naming the file if it is unreadable."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        why = str(e)
        try:  # not .npy at all: numpy takes it for a pickle and offers to unpickle it
            with open(path, 'rb') as f:
                why = why if f.read(6) == b'\x93NUMPY' else 'not a .npy file'
        except OSError:
            pass
        raise ValueError(f'cannot read {path!r} (item {index}): {why}') from None


def load_fastdit_item(feat_path, label_path, index):
    """One fast-DiT item as ``(latent (C, H, W) float32 array, label int)``."""
    x = load_npy(feat_path, index)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f'{feat_path!r} (item {index}) has shape {x.shape} and dtype '
                         f'{x.dtype}; expected a float (1, C, H, W) or (C, H, W) array')
    y = load_npy(label_path, index)
    if y.size != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f'{label_path!r} (item {index}) has shape {y.shape} and dtype '
                         f'{y.dtype}; expected one integer class id')
    return x.astype(np.float32, copy=False), int(y.reshape(()))


@DATASETS.register_module()
class NpyLatentDataset(Dataset):
    """fast-DiT features: ``features_dir/N.npy`` latents with ``labels_dir/N.npy`` ids.

    Items are ``{'latents': FloatTensor (C, H, W), 'labels': int}``; the latents are
    already multiplied by the VAE scale factor, as fast-DiT stores them. No randomness:
    fast-DiT flipped the images before encoding.

    Args:
        features_dir (str): Folder of latent files, relative to ``data_root``.
        labels_dir (str): Folder of label files, relative to ``data_root``.
        data_root (str): Prefix joined to both folders. Defaults to ''.
    """

    def __init__(self, features_dir, labels_dir, data_root=''):
        self.features_dir = osp.join(data_root, features_dir)
        self.labels_dir = osp.join(data_root, labels_dir)
        self.pairs = list_npy_pairs(self.features_dir, self.labels_dir)
        # Check one item now so that a wrong folder fails at build time, not mid-run.
        self.latent_shape = load_fastdit_item(*self.pairs[0], 0)[0].shape

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, idx):
        x, y = load_fastdit_item(*self.pairs[idx], idx)
        if x.shape != self.latent_shape:
            raise ValueError(f'{self.pairs[idx][0]!r} (item {idx}) has latent shape '
                             f'{x.shape}; item 0 has {self.latent_shape}')
        return dict(latents=torch.from_numpy(np.ascontiguousarray(x)), labels=y, sample_idx=idx)

"""Dataset over a packed latent store (see :mod:`mmsora.datasets.latent_store`)."""
import os.path as osp

import numpy as np
import torch
from torch.utils.data import Dataset

from mmsora.registry import DATASETS
from .latent_store import LatentStore
from .utils import WorkerRNGMixin, draw_seed

__all__ = ['PackedLatentDataset']


@DATASETS.register_module()
class PackedLatentDataset(WorkerRNGMixin, Dataset):
    """Latents from a packed store, with posterior sampling and flip copies.

    Items are ``{'latents': FloatTensor (C, H, W) (or (C, T, H, W)), 'labels': int}``,
    scaled by the VAE scale factor, plus ``text_embeds`` (L, D), ``text_mask`` (L,)
    and (CLIP) ``pooled_text_embeds`` (D2,) when the store keeps text embeddings, in
    the store's dtype (float16 / bfloat16: half the bytes of float32 from workers to
    the device; the model casts them to its own; a loader over stores of two dtypes,
    a ConcatDataset of a float16 and a bfloat16 store, batches them in its first
    item's dtype in its workers). When the store holds moments, the latent is
    ``mean + std * eps`` with ``eps`` drawn fresh each time (as DiT's training loop
    does with ``latent_dist.sample()``); when it holds flip copies, one is picked at
    random. All draws come from a per-process generator seeded by ``(seed, rank,
    worker_id)`` and, in a loader worker, the loader's per-iterator seed (see
    :class:`WorkerRNGMixin`), never from the global RNGs.

    Args:
        data_root (str): Prefix of ``store``.
        store (str): Store folder relative to ``data_root``. Defaults to ''.
        sample_posterior (bool): Draw from the posterior (moments stores); if False
            return its mean. Ignored for 'samples' stores. Defaults to True.
        random_flip (bool): Pick a random copy (original / flipped) when the store has
            two; if False always the original. Defaults to True.
        seed (int, optional): Seed of the draws; None draws one from torch's global RNG
            at construction. Defaults to None.
    """

    def __init__(self, data_root, store='', sample_posterior=True, random_flip=True,
                 seed=None):
        self.store = LatentStore(osp.join(data_root, store))
        if len(self.store) == 0:  # an infinite sampler would wait on it for ever
            num_skipped = self.store.index.get('num_skipped', 0)
            raise ValueError(f'latent store {self.store.root!r} holds no latents'
                             + (f' (its extraction skipped all {num_skipped} inputs as '
                                'unreadable)' if num_skipped else ''))
        self.sample_posterior = sample_posterior
        self.random_flip = random_flip
        self.seed = draw_seed(seed)
        self.metainfo = dict(self.store.index['meta'], scale_factor=self.store.scale_factor,
                             latent_shape=self.store.latent_shape)

    def __len__(self):
        return len(self.store)

    def __getitem__(self, idx):
        copy = 0
        if self.random_flip and self.store.num_copies > 1:
            copy = int(self.rng.integers(self.store.num_copies))
        item = self.store.read(idx, copy)  # (K, *latent_shape) float32
        if self.store.content == 'moments':
            mean, std = item[0], item[1]
            latents = mean
            if self.sample_posterior:
                eps = self.rng.standard_normal(mean.shape, dtype=np.float32)
                latents = mean + std * eps
        else:
            latents = item[0]
        out = dict(latents=torch.from_numpy(np.ascontiguousarray(latents)),
                   labels=int(self.store.labels[idx]), sample_idx=idx)
        out.update(self.store.text(idx, decode=False) or {})
        return out

"""Dataset over a packed latent store (see :mod:`mmsora.datasets.latent_store`)."""
import os
import os.path as osp

import numpy as np
import torch
from torch.utils.data import Dataset

from mmsora.registry import DATASETS
from .latent_store import LatentStore, locate
from .store_format import TORCH_DTYPES, UNRECORDED_TEXT_ENCODER_DTYPE
from .utils import WorkerRNGMixin, draw_seed

__all__ = ['PackedLatentDataset']


@DATASETS.register_module()
class PackedLatentDataset(WorkerRNGMixin, Dataset):
    """Latents from a packed store, with posterior sampling and flip copies.

    Items are ``{'latents': FloatTensor (C, H, W) (or (C, T, H, W)), 'labels': int}``,
    scaled by the VAE scale factor, plus ``text_embeds`` (L, D), ``text_mask`` (L,)
    and (CLIP) ``pooled_text_embeds`` (D2,) when the store keeps text embeddings, in
    the store's dtype (float16 / bfloat16: half the bytes of float32 from workers to
    the device; the model casts them to its own). When the store holds moments, the
    latent is ``mean + std * eps`` with ``eps`` drawn fresh each time (as DiT's training loop
    does with ``latent_dist.sample()``); when it holds flip copies, one is picked at
    random. All draws come from a per-process generator seeded by ``(seed, rank,
    worker_id)`` and, in a loader worker, the loader's per-iterator seed (see
    :class:`WorkerRNGMixin`), never from the global RNGs.

    Several stores (``store=['ucf101', 'mine']``) read as one dataset, in order, when
    their latents fit one model: the same latent shape, scale and shift, all with
    caption embeddings of one shape or none, encoded by a text encoder of one kind,
    hidden layer and dtype (where they record it; a layer's positive index and its
    negative one are one where both stores' text encoder folders are here), and the same
    class name for each label two of them name (image stores record their class
    folders, video stores their manifest's class_name column; a refusal names the first
    setting that differs). A
    store of moments and one of samples, or with and without flip copies, go together
    (each item is read as its store holds it); caption embeddings of stores of two dtypes come in
    the wider one (float16 with bfloat16: float32), so a batch is one dtype. Each
    item's ``sample_idx`` counts across the stores.

    Args:
        data_root (str | os.PathLike): Prefix of ``store``.
        store (str | os.PathLike | list): Store folder relative to ``data_root``, or
            several (str and pathlib.Path alike). Defaults to ''.
        sample_posterior (bool): Draw from the posterior (moments stores); if False
            return its mean. Ignored for 'samples' stores. Defaults to True.
        random_flip (bool): Pick a random copy (original / flipped) when the store has
            two; if False always the original. Defaults to True.
        seed (int, optional): Seed of the draws; None draws one from torch's global RNG
            at construction. Defaults to None.
    """

    def __init__(self, data_root, store='', sample_posterior=True, random_flip=True,
                 seed=None):
        # (a pathlib.Path store was iterated as a list: 'PosixPath' is not iterable)
        names = [store] if isinstance(store, (str, os.PathLike)) else list(store)
        if not names or not all(isinstance(name, (str, os.PathLike)) for name in names):
            raise TypeError(f'store must be a folder or a list of folders, got {store!r}')
        data_root = os.fspath(data_root)
        self.stores = [LatentStore(osp.join(data_root, os.fspath(name))) for name in names]
        for one in self.stores:
            if len(one) == 0:  # an infinite sampler would wait on it for ever
                num_skipped = one.index.get('num_skipped', 0)
                raise ValueError(f'latent store {one.root!r} holds no latents'
                                 + (f' (its extraction skipped all {num_skipped} inputs as '
                                    'unreadable)' if num_skipped else ''))
        check_stores_fit(self.stores)
        self.offsets = np.cumsum([0] + [len(one) for one in self.stores])
        dtypes = {one.dtype for one in self.stores if one.text_shape is not None}
        self.text_dtype = None  # (one dtype: each store's own)
        if len(dtypes) > 1:
            self.text_dtype = TORCH_DTYPES[dtypes.pop()]
            for dtype in dtypes:
                self.text_dtype = torch.promote_types(self.text_dtype, TORCH_DTYPES[dtype])
        self.sample_posterior = sample_posterior
        self.random_flip = random_flip
        self.seed = draw_seed(seed)
        first = self.stores[0]
        self.metainfo = dict(first.index['meta'], scale_factor=first.scale_factor,
                             latent_shape=first.latent_shape)
        if len(self.stores) > 1:
            self.metainfo['stores'] = [one.root for one in self.stores]

    @property
    def store(self):
        """The store, where there is one (a single ``store`` folder)."""
        if len(self.stores) > 1:
            raise AttributeError('this PackedLatentDataset reads several stores: see '
                                 '.stores and .locate(index)')
        return self.stores[0]

    def __len__(self):
        return int(self.offsets[-1])

    def locate(self, idx):
        """``(store, index in it)`` of item ``idx``."""
        i, row = locate(self.offsets, idx, 'a dataset')
        return self.stores[i], row

    def item_name(self, idx):
        """Where item ``idx`` is kept: its store's shard file and row."""
        store, row = self.locate(idx)
        return store.item_name(row)

    def __getitem__(self, idx):
        store, row = self.locate(idx)
        copy = 0
        if self.random_flip and store.num_copies > 1:
            copy = int(self.rng.integers(store.num_copies))
        item = store.read(row, copy)  # (K, *latent_shape) float32
        if store.content == 'moments':
            mean, std = item[0], item[1]
            latents = mean
            if self.sample_posterior:
                eps = self.rng.standard_normal(mean.shape, dtype=np.float32)
                latents = mean + std * eps
        else:
            latents = item[0]
        out = dict(latents=torch.from_numpy(np.ascontiguousarray(latents)),
                   labels=int(store.labels[row]), sample_idx=int(idx))
        text = store.text(row, decode=False) or {}
        if self.text_dtype is not None:
            text = {k: v.to(self.text_dtype) if v.is_floating_point() else v
                    for k, v in text.items()}
        out.update(text)
        return out


def check_stores_fit(stores):
    """Refuse (ValueError naming the setting) stores whose latents do not fit one model
    together."""
    first = stores[0]

    def setting(one):
        return dict(latent_shape=one.latent_shape, scale_factor=one.scale_factor,
                    shift_factor=one.index.get('shift_factor') or 0.0,
                    text_shape=one.text_shape, pooled_dim=one.pooled_dim)

    def refuse(one, other, what):
        raise ValueError(f'latent stores {one.root!r} and {other.root!r} cannot be read as '
                         f'one dataset: {what}')

    ours = setting(first)
    for other in stores[1:]:
        theirs = setting(other)
        for key, value in ours.items():
            if theirs[key] != value:
                refuse(first, other, f'{key} {value!r} against {theirs[key]!r}')
    # How the captions were encoded, between stores that both record their text encoder
    # (extract_features.py's): embeddings of another kind, layer or precision of the
    # encoder trained as one dataset without a word. Not the folder: one model may be
    # kept in two places (and a folder recorded relative cannot be compared); it counts
    # the layers where a positive index meets a negative one (same_layer).
    encoded = [one for one in stores if (one.index.get('meta') or {}).get('text_encoder')]
    for i, other in enumerate(encoded):
        theirs = text_encoding(other)
        for one in encoded[:i]:
            ours = text_encoding(one)
            for key, option in TEXT_ENCODING_OPTIONS.items():
                if key in ours and key in theirs and ours[key] != theirs[key] and \
                        not (key == 'hidden_layer' and same_layer(one, other)):
                    refuse(one, other, f'{key} {ours[key]!r} against {theirs[key]!r} '
                                       "(their captions' text encoder): extract one of "
                                       f"them again with the other's {option}")
    # Class names are compared label by label, where two stores both name one (a
    # manifest's store may name some labels only, or none), each against every store
    # before it that names it.
    named = {}  # label: (its name, the store that first named it)
    for other in stores:
        classes = classes_of(other) or ()
        for label, name in enumerate(classes):
            if name is None:
                continue
            known, one = named.setdefault(label, (name, other))
            if known != name:
                refuse(one, other, f'classes {classes_of(one)!r} against {classes!r} (label '
                                   f'{label} is {known!r} in one, {name!r} in the other)')


# The text encoder's settings a store records (extract_features.py), with the option
# that sets each.
TEXT_ENCODING_OPTIONS = dict(text_encoder_kind='--text-encoder-kind',
                             hidden_layer='--hidden-layer',
                             text_encoder_dtype='--text-encoder-dtype')


def text_encoding(store):
    """The settings of the text encoder that encoded a store's captions, those it
    records: the dtype is float32 where it records none (the default, and that of
    older stores); a store of an older mmsora records no hidden layer."""
    meta = store.index.get('meta') or {}
    found = {key: meta[key] for key in TEXT_ENCODING_OPTIONS if key in meta}
    found.setdefault('text_encoder_dtype', UNRECORDED_TEXT_ENCODER_DTYPE)
    if 'hidden_layer' in found:  # (T5's -1 is its last hidden state: None)
        from mmsora.models.text_encoders.hf_text_encoder import same_hidden_state
        found['hidden_layer'] = same_hidden_state(meta.get('text_encoder_kind', 't5'),
                                                  found['hidden_layer'])
    return found


def same_layer(one, other) -> bool:
    """Whether two stores' recorded hidden layers are one hidden state of their text
    encoders, counted with each one's layers where both recorded folders are here (a
    layer's positive index and its negative one: CLIP-L's 11 and -2); else as
    :func:`text_encoding` gives them."""
    from mmsora.models.text_encoders.hf_text_encoder import same_hidden_layers

    def setting(store):
        meta = store.index.get('meta') or {}
        return (meta.get('text_encoder_kind', 't5'), meta.get('hidden_layer'),
                meta.get('text_encoder'))
    return same_hidden_layers(setting(one), setting(other))


def classes_of(store):
    """The class names a store records (``classes[label]``), or None."""
    return (store.index.get('meta') or {}).get('classes')

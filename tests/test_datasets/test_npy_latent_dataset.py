import os

import numpy as np
import pytest
import torch

from mmsora.datasets import NpyLatentDataset
from mmsora.registry import DATASETS


def make_fastdit(root, n=12, shape=(1, 4, 8, 8)):
    """fast-DiT's layout: features/N.npy (1, 4, h, w) float32, labels/N.npy (1,)."""
    feats, labels = root / 'features', root / 'labels'
    feats.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((n, *shape)).astype(np.float32)
    for i in range(n):
        np.save(feats / f'{i}.npy', xs[i])
        np.save(labels / f'{i}.npy', np.array([i % 5]))
    return xs


def test_reads_fastdit_layout_in_numeric_order(tmp_path):
    xs = make_fastdit(tmp_path)
    ds = DATASETS.build(dict(type='NpyLatentDataset', data_root=str(tmp_path),
                             features_dir='features', labels_dir='labels'))
    assert len(ds) == 12
    # 0, 1, 2, ..., 10, 11 — not the lexicographic 0, 1, 10, 11, 2, ...
    assert [os.path.basename(f) for f, _ in ds.pairs][:4] == ['0.npy', '1.npy', '2.npy', '3.npy']
    for i in (2, 10, 11):
        item = ds[i]
        assert item['latents'].shape == (4, 8, 8) and item['latents'].dtype == torch.float32
        np.testing.assert_array_equal(item['latents'].numpy(), xs[i][0])
        assert item['labels'] == i % 5 and isinstance(item['labels'], int)


def test_accepts_chw_features(tmp_path):
    make_fastdit(tmp_path, n=3, shape=(4, 8, 8))
    ds = NpyLatentDataset('features', 'labels', data_root=str(tmp_path))
    assert ds[2]['latents'].shape == (4, 8, 8)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope'):
        NpyLatentDataset('nope', 'labels', data_root=str(tmp_path))
    (tmp_path / 'features').mkdir()
    (tmp_path / 'labels').mkdir()
    with pytest.raises(ValueError, match='features.*no .npy'):
        NpyLatentDataset('features', 'labels', data_root=str(tmp_path))


def test_count_and_name_mismatch(tmp_path):
    make_fastdit(tmp_path, n=4)
    os.remove(tmp_path / 'labels' / '3.npy')
    with pytest.raises(ValueError, match=r"features/3.npy' has no label file"):
        NpyLatentDataset('features', 'labels', data_root=str(tmp_path))
    np.save(tmp_path / 'labels' / '7.npy', np.array([1]))
    os.remove(tmp_path / 'features' / '3.npy')
    with pytest.raises(ValueError, match=r"labels/7.npy' has no feature file"):
        NpyLatentDataset('features', 'labels', data_root=str(tmp_path))


def test_corrupt_file_and_bad_shape(tmp_path):
    make_fastdit(tmp_path, n=4)
    (tmp_path / 'features' / '2.npy').write_bytes(b'\x93NUMPY garbage')
    ds = NpyLatentDataset('features', 'labels', data_root=str(tmp_path))
    with pytest.raises(ValueError, match=r"features/2.npy' \(item 2\)"):
        ds[2]
    np.save(tmp_path / 'features' / '3.npy', np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"features/3.npy' \(item 3\) has shape \(2, 4, 8, 8\)"):
        ds[3]
    np.save(tmp_path / 'features' / '3.npy', np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"3.npy' \(item 3\) has latent shape"):
        ds[3]
    np.save(tmp_path / 'labels' / '1.npy', np.array([1.5]))
    with pytest.raises(ValueError, match=r"labels/1.npy' \(item 1\)"):
        ds[1]
    # A pickled object array is refused, not executed.
    np.save(tmp_path / 'features' / '0.npy', np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"features/0.npy' \(item 0\)"):
        ds[0]

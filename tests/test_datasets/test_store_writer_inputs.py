"""What LatentStoreWriter takes from Python: non-finite latents, and a store read before
``finalize``."""
import os

import numpy as np
import pytest

from mmsora.datasets import LatentStore, LatentStoreWriter, PackedLatentDataset

SHAPE = (4, 2, 2)


def items(n, seed=0):
    """``n`` moments ``(n, 1, 2, *SHAPE)`` (positive stds) and their labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 2, *SHAPE)).astype(np.float32)
    x[:, :, 1] = np.abs(x[:, :, 1]) + 0.1
    return x, np.arange(n) % 3


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'bfloat16'])
@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_nonfinite_latents_refused(tmp_path, dtype, bad):
    """NaN / inf latents were written without a word and served by the dataset."""
    root = str(tmp_path / 'store')
    x, labels = items(6)
    x[4, 0, 0, 1, 1, 0] = bad  # item 1 of shard 1
    writer = LatentStoreWriter(root, 6, SHAPE, dtype=dtype, shard_size=3)
    writer.write_shard(0, x[:3], labels[:3])
    with pytest.raises(ValueError, match=r"shard 1: item 1 holds NaN or inf in its latents "
                                         rf"\(1 of 32 values, as {dtype}\)"):
        writer.write_shard(1, x[3:], labels[3:])
    # nothing of shard 1 was written or listed: the store stays resumable
    assert not os.path.exists(os.path.join(root, 'shard_00001.npy'))
    assert writer.pending_shards() == [1]
    writer.write_shard(1, np.nan_to_num(x[3:], posinf=1, neginf=-1), labels[3:])
    assert writer.finalize()['complete']
    assert all(np.isfinite(PackedLatentDataset(root)[i]['latents']).all() for i in range(6))


def test_values_past_float16_refused(tmp_path):
    """A float32 value past float16's range is inf once stored: refused as such."""
    x, labels = items(3)
    x[2, 0, 0] = 1e5
    writer = LatentStoreWriter(str(tmp_path), 3, SHAPE, dtype='float16')
    with pytest.raises(ValueError, match=r'item 2 holds NaN or inf in its latents '
                                         r'\(16 of 32 values, as float16\)'):
        writer.write_shard(0, x, labels)
    # float32 keeps them
    LatentStoreWriter(str(tmp_path / 'f32'), 3, SHAPE, dtype='float32').write_shard(
        0, x, labels)


def test_first_bad_item_named_and_the_rest_counted(tmp_path):
    x, labels = items(5)
    x[[1, 3, 4], 0, 1] = np.nan
    writer = LatentStoreWriter(str(tmp_path), 5, SHAPE, dtype='float32')
    with pytest.raises(ValueError, match=r'shard 0: item 1 \(and 2 more\) holds NaN'):
        writer.write_shard(0, x, labels)


def test_bad_item_past_the_first_rows(tmp_path):
    """A shard is checked a block of rows at a time: an item in a later block too."""
    x, labels = items(300)
    x[280, 0, 1, 3] = np.inf
    writer = LatentStoreWriter(str(tmp_path), 300, SHAPE, dtype='bfloat16', shard_size=300)
    with pytest.raises(ValueError, match=r'shard 0: item 280 holds NaN or inf in its '
                                         r'latents \(4 of 32 values, as bfloat16\)'):
        writer.write_shard(0, x, labels)


def test_nonfinite_text_embeds_refused(tmp_path):
    x, labels = items(2)
    text = dict(text_embeds=np.zeros((2, 3, 5), np.float32),
                text_mask=np.ones((2, 3), bool),
                pooled_text_embeds=np.zeros((2, 4), np.float32))
    text['pooled_text_embeds'][1, 2] = np.inf
    writer = LatentStoreWriter(str(tmp_path), 2, SHAPE, text_shape=(3, 5), pooled_dim=4)
    with pytest.raises(ValueError, match=r'item 1 holds NaN or inf in its '
                                         r'pooled_text_embeds \(1 of 4 values'):
        writer.write_shard(0, x, labels, text=text)
    text['pooled_text_embeds'][1, 2] = 0
    text['text_embeds'][0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r'item 0 holds NaN or inf in its text_embeds'):
        writer.write_shard(0, x, labels, text=text)


def test_shard_of_skipped_items_only(tmp_path):
    """A shard whose items were all skipped has no values to check: written."""
    writer = LatentStoreWriter(str(tmp_path), 2, SHAPE, dtype='bfloat16')
    writer.write_shard(0, np.zeros((0, 1, 2, *SHAPE), np.float32), [], skipped=['a', 'b'])
    assert writer.finalize()['num_skipped'] == 2


def test_unfinalized_store_names_finalize(tmp_path):
    """A store written from Python and read before finalize() was told to 'rerun the
    extraction', which there was none of."""
    root = str(tmp_path)
    x, labels = items(2)
    writer = LatentStoreWriter(root, 2, SHAPE)
    writer.write_shard(0, x, labels)
    with pytest.raises(FileNotFoundError, match=r'not finalized.*a store written from '
                                                r'Python needs LatentStoreWriter\.finalize\(\)'):
        LatentStore(root)
    writer.finalize()
    assert len(LatentStore(root)) == 2


def test_labels_that_are_not_class_ids_are_refused(tmp_path):
    """write_shard cast labels to int64: 1.5 was stored as class 1. The writer does not
    know the classes: whole numbers of any value pass (the store's check against the
    config's classes comes at training)."""
    from mmsora.datasets import LatentStoreWriter
    writer = LatentStoreWriter(str(tmp_path / 's'), 2, (4, 2, 2), dtype='float32',
                               shard_size=2)
    latents = np.zeros((2, 1, 2, 4, 2, 2), np.float32)  # (n, copies, mean / std, C, H, W)
    with pytest.raises(ValueError, match=r"shard 0: labels \[1.5\] are not class ids "
                                         r'\(whole numbers\)$'):
        writer.write_shard(0, latents, [0, 1.5])
    writer.write_shard(0, latents, [0, 7.0])

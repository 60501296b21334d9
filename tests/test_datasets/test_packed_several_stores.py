"""PackedLatentDataset over several latent stores read as one dataset.

No config could train on two stores (UCF-101 and one's own clips; a second batch of
clips extracted later): mmengine's ConcatDataset takes its own BaseDataset subclasses
alone, and a store had to be extracted again from a joined manifest."""
import os.path as osp

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmsora.datasets import LatentStore, LatentStoreWriter, PackedLatentDataset
from mmsora.utils.cli import UserError

SHAPE = (4, 2, 2)


def write(root, labels, copies=1, content='moments', scale=0.18215, shape=SHAPE,
          text=None, dtype='float32', seed=0, meta=None):
    """A finished store of ``len(labels)`` items (2 per shard); ``text``: (L, D) of
    caption embeddings, filled with ``seed`` + the item's index."""
    rng = np.random.default_rng(seed)
    k = 2 if content == 'moments' else 1
    x = rng.standard_normal((len(labels), copies, k, *shape)).astype(np.float32)
    if k == 2:
        x[:, :, 1] = np.abs(x[:, :, 1]) + 0.1
    writer = LatentStoreWriter(root, len(labels), shape, dtype=dtype, content=content,
                               num_copies=copies, scale_factor=scale, shard_size=2,
                               text_shape=text, meta=meta)
    for k in writer.pending_shards():
        s, e = writer.shard_range(k)
        fields = None
        if text is not None:
            embeds = np.stack([np.full(text, seed + i, np.float32) for i in range(s, e)])
            fields = dict(text_embeds=embeds, text_mask=np.ones((e - s, text[0]), bool))
        writer.write_shard(k, x[s:e], np.asarray(labels[s:e]), text=fields)
    writer.finalize()
    return x


def test_two_stores_read_as_one_in_order(tmp_path):
    a = write(str(tmp_path / 'a'), [0, 1, 2], copies=2, seed=1)  # moments, flip copies
    b = write(str(tmp_path / 'b'), [3, 4], content='samples', seed=2)
    data = PackedLatentDataset(str(tmp_path), store=['a', 'b'], sample_posterior=False,
                               random_flip=False, seed=0)
    assert len(data) == 5
    assert [data[i]['labels'] for i in range(5)] == [0, 1, 2, 3, 4]
    assert [data[i]['sample_idx'] for i in range(5)] == [0, 1, 2, 3, 4]
    for i in range(3):  # store a's posterior mean, original copy
        np.testing.assert_allclose(data[i]['latents'].numpy(), a[i, 0, 0], rtol=1e-6)
    for i in range(2):  # store b's samples
        np.testing.assert_allclose(data[3 + i]['latents'].numpy(), b[i, 0, 0], rtol=1e-6)
    assert data.item_name(4) == osp.join(str(tmp_path / 'b'), 'shard_00000.npy') + ' row 1'
    assert data.item_name(-1) == data.item_name(4)
    with pytest.raises(IndexError, match='item 5 out of range for a dataset of 5 items'):
        data[5]
    assert data.metainfo['stores'] == [str(tmp_path / 'a'), str(tmp_path / 'b')]
    with pytest.raises(AttributeError, match='reads several stores'):
        data.store
    # one store, as before
    one = PackedLatentDataset(str(tmp_path), store='b', seed=0)
    assert isinstance(one.store, LatentStore) and len(one) == 2 and 'stores' not in one.metainfo


@pytest.mark.parametrize('other,named', [
    (dict(shape=(4, 4, 4)), r'latent_shape \(4, 2, 2\) against \(4, 4, 4\)'),
    (dict(scale=0.13025), 'scale_factor 0.18215 against 0.13025'),
    (dict(text=(3, 8)), r'text_shape None against \(3, 8\)'),
    (dict(meta=dict(classes=['cat', 'dog'])), r"classes \['ant', 'bee'\] against \['cat', "),
])
def test_stores_that_do_not_fit_one_model_are_refused(tmp_path, other, named):
    write(str(tmp_path / 'a'), [0, 1], meta=dict(classes=['ant', 'bee']))
    write(str(tmp_path / 'b'), [0, 1], **other)
    with pytest.raises(ValueError, match=r"latent stores '.*a' and '.*b' cannot be read as "
                                         rf'one dataset: {named}'):
        PackedLatentDataset(str(tmp_path), store=['a', 'b'])


def test_a_store_without_class_names_goes_with_one_that_has_them(tmp_path):
    write(str(tmp_path / 'a'), [0, 1], meta=dict(classes=['ant', 'bee']))
    write(str(tmp_path / 'b'), [1, 0])  # (a manifest's store records none)
    assert len(PackedLatentDataset(str(tmp_path), store=['a', 'b'])) == 4


def test_bad_store_lists_are_named(tmp_path):
    write(str(tmp_path / 'a'), [0])
    for bad in ([], ['a', 3]):
        with pytest.raises(TypeError, match='store must be a folder or a list of folders'):
            PackedLatentDataset(str(tmp_path), store=bad)
    with pytest.raises(FileNotFoundError, match='no latent store index .*missing'):
        PackedLatentDataset(str(tmp_path), store=['a', 'missing'])


def test_captions_of_a_float16_and_a_bfloat16_store_batch_in_float32(tmp_path):
    """Each store hands its captions over in its own dtype; across two dtypes the
    default collate stacked a batch in its first item's dtype in a worker (bfloat16
    embeddings past float16's range became inf) and promoted it in the main process."""
    write(str(tmp_path / 'half'), [0, 1], text=(3, 4), dtype='float16', seed=10)
    write(str(tmp_path / 'brain'), [0, 1], text=(3, 4), dtype='bfloat16', seed=70000)
    data = PackedLatentDataset(str(tmp_path), store=['half', 'brain'], seed=0)
    assert data.text_dtype == torch.float32
    for workers in (0, 2):
        batch = next(iter(DataLoader(data, batch_size=4, num_workers=workers)))
        assert batch['text_embeds'].dtype == torch.float32, workers
        assert batch['text_mask'].dtype == torch.bool
        np.testing.assert_allclose(batch['text_embeds'][:, 0, 0].numpy(),
                                   [10, 11, 70144, 70144], rtol=0)  # (bfloat16 of 70000, 70001)
    # stores of one dtype keep it (half the bytes from the workers)
    write(str(tmp_path / 'half2'), [0], text=(3, 4), dtype='float16')
    data = PackedLatentDataset(str(tmp_path), store=['half', 'half2'], seed=0)
    assert data.text_dtype is None and data[2]['text_embeds'].dtype == torch.float16


def test_training_checks_each_store_before_the_run(repo_root, tmp_path):
    """tools/train.py's store checks (labels against num_classes, scale, shapes) look at
    every store of the list, naming the one at fault."""
    from tools.train import build_train_config, parse_args
    write(str(tmp_path / 'a'), [0, 1, 2, 3], shape=(4, 32, 32))
    write(str(tmp_path / 'b'), [0, 7], shape=(4, 32, 32))
    argv = [osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py'),
            '--work-dir', str(tmp_path / 'w'), '--cfg-options', 'model.num_classes=4',
            'model.denoiser.num_classes=4', f'train_dataloader.dataset.data_root={tmp_path}',
            "train_dataloader.dataset.store=['a','b']"]
    with pytest.raises(UserError, match=r"b: the store's labels go up to 7 but "
                                        r'model.num_classes=4'):
        build_train_config(parse_args(argv))
    build_train_config(parse_args([*argv[:-1], "train_dataloader.dataset.store=['a','a']"]))


def test_a_missing_store_is_named_before_the_run(repo_root, tmp_path):
    """A data_root without index.json (fast-DiT's features folder given as a store) was
    named after the Runner's start-up, which left the work dir's folders behind
    (walk-through p)."""
    from tools.train import build_train_config, parse_args
    (tmp_path / 'features').mkdir()
    argv = [osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py'),
            '--work-dir', str(tmp_path / 'w'), '--cfg-options',
            f'train_dataloader.dataset.data_root={tmp_path / "features"}']
    with pytest.raises(UserError, match=r"^train_dataloader.dataset: no latent store index "
                                        r"'.*features/index.json'"):
        build_train_config(parse_args(argv))
    assert not (tmp_path / 'w').exists()


def test_a_store_folder_that_does_not_exist_is_named_before_the_run(repo_root, tmp_path):
    """A data_root that does not exist was left to the dataset, named after the
    Runner's start-up (39 s of building Stable Cascade lite, the work dir made;
    walk-through s). build_train_config's checks still take a config without its data
    (tests/test_configs.py checks every shipped config so)."""
    from tools.train import build_train_config, main, parse_args
    argv = [osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py'),
            '--work-dir', str(tmp_path / 'w'), '--cfg-options',
            f'train_dataloader.dataset.data_root={tmp_path / "nowhere"}']
    build_train_config(parse_args(argv))
    with pytest.raises(UserError, match=r"^train_dataloader.dataset: no latent store index "
                                        r"'.*nowhere/index.json' \(no such folder\)"):
        main(argv)
    assert not (tmp_path / 'w').exists()

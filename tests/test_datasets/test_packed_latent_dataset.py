from unittest import mock

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmsora.datasets import LatentStoreWriter, PackedLatentDataset
from mmsora.registry import DATASETS

SHAPE = (4, 4, 4)


def make_store(root, n=6, content='moments', copies=1, dtype='float32'):
    rng = np.random.default_rng(1)
    k = 2 if content == 'moments' else 1
    x = rng.standard_normal((n, copies, k, *SHAPE)).astype(np.float32)
    if content == 'moments':
        x[:, :, 1] = rng.uniform(0.5, 2.0, (n, copies, *SHAPE))
    labels = np.arange(n) % 3
    w = LatentStoreWriter(str(root), n, SHAPE, dtype=dtype, content=content,
                          num_copies=copies, shard_size=4)
    for s in w.pending_shards():
        a, b = w.shard_range(s)
        w.write_shard(s, x[a:b], labels[a:b])
    w.finalize()
    return x, labels


def test_build_and_item_contract(tmp_path):
    x, labels = make_store(tmp_path / 'store', content='samples')
    ds = DATASETS.build(dict(type='PackedLatentDataset', data_root=str(tmp_path),
                             store='store', seed=0))
    assert len(ds) == 6
    item = ds[4]
    assert set(item) == {'latents', 'labels', 'sample_idx'} and item['sample_idx'] == 4
    assert item['latents'].dtype == torch.float32 and item['latents'].shape == SHAPE
    np.testing.assert_array_equal(item['latents'].numpy(), x[4, 0, 0])
    assert item['labels'] == labels[4] and isinstance(item['labels'], int)
    batch = DataLoader(ds, batch_size=3, collate_fn=torch.utils.data.default_collate)
    b = next(iter(batch))
    assert b['latents'].shape == (3, *SHAPE) and b['labels'].tolist() == labels[:3].tolist()


def test_posterior_sampling_statistics(tmp_path):
    x, _ = make_store(tmp_path, content='moments')
    ds = PackedLatentDataset(str(tmp_path), seed=3)
    draws = torch.stack([ds[1]['latents'] for _ in range(4000)]).numpy()
    mean, std = x[1, 0, 0], x[1, 0, 1]
    # 4000 draws: the standard error of the mean is std / 63.
    np.testing.assert_allclose(draws.mean(0), mean, atol=5 * std.max() / 63)
    np.testing.assert_allclose(draws.std(0), std, rtol=0.1)
    det = PackedLatentDataset(str(tmp_path), sample_posterior=False, seed=3)
    np.testing.assert_array_equal(det[1]['latents'].numpy(), mean)


def test_flip_copies(tmp_path):
    x, _ = make_store(tmp_path, content='samples', copies=2)
    ds = PackedLatentDataset(str(tmp_path), seed=0)
    seen = [ds[2]['latents'].numpy() for _ in range(200)]
    picks = [0 if np.array_equal(s, x[2, 0, 0]) else 1 if np.array_equal(s, x[2, 1, 0])
             else -1 for s in seen]
    assert -1 not in picks and 60 < sum(picks) < 140  # both copies, about half each
    no_flip = PackedLatentDataset(str(tmp_path), random_flip=False, seed=0)
    assert all(np.array_equal(no_flip[2]['latents'].numpy(), x[2, 0, 0]) for _ in range(20))


def draws(ds, n=5):
    return np.stack([ds[i % len(ds)]['latents'].numpy() for i in range(n)])


def test_same_seed_same_draws_and_no_global_rng(tmp_path):
    make_store(tmp_path, copies=2)
    torch.manual_seed(0)
    np.random.seed(0)
    a = draws(PackedLatentDataset(str(tmp_path), seed=7))
    # The global RNGs are neither used nor disturbed.
    state = torch.get_rng_state(), np.random.get_state()[1].copy()
    b = draws(PackedLatentDataset(str(tmp_path), seed=7))
    assert torch.equal(torch.get_rng_state(), state[0])
    assert np.array_equal(np.random.get_state()[1], state[1])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draws(PackedLatentDataset(str(tmp_path), seed=8)))


def test_seed_none_draws_from_torch_global_rng(tmp_path):
    make_store(tmp_path)
    torch.manual_seed(123)
    s1 = PackedLatentDataset(str(tmp_path)).seed
    torch.manual_seed(123)
    assert PackedLatentDataset(str(tmp_path)).seed == s1
    torch.manual_seed(124)
    assert PackedLatentDataset(str(tmp_path)).seed != s1


def test_worker_ids_give_different_draws(tmp_path):
    make_store(tmp_path)

    def draws_as_worker(worker_id):
        ds = PackedLatentDataset(str(tmp_path), seed=7)
        info = mock.Mock(id=worker_id, seed=1234 + worker_id)  # (a loader's base seed + id)
        with mock.patch('torch.utils.data.get_worker_info', return_value=info):
            return draws(ds)

    np.testing.assert_array_equal(draws_as_worker(1), draws_as_worker(1))
    assert not np.array_equal(draws_as_worker(0), draws_as_worker(1))


def test_real_dataloader_workers(tmp_path):
    make_store(tmp_path, n=4)
    ds = PackedLatentDataset(str(tmp_path), seed=7)

    def run():
        # Every item twice, one per worker (batches alternate between the workers). The
        # workers' generators take the loader's base seed too (drawn from torch's RNG
        # for each iterator: each epoch draws anew, test_worker_rng_epochs.py).
        torch.manual_seed(0)
        loader = DataLoader(ds, batch_size=4, num_workers=2, sampler=[0, 1, 2, 3] * 2)
        return [b['latents'].numpy() for b in loader]

    w0, w1 = run()
    assert not np.array_equal(w0, w1)  # worker 0 and 1 draw different noise
    np.testing.assert_array_equal(run()[0], w0)  # and the same again on a rerun

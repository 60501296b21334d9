import glob
import json
import os

import numpy as np
import pytest
import torch

from mmsora.datasets import LatentStore, LatentStoreWriter

SHAPE = (4, 2, 2)


def make_items(n, copies=1, k=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, copies, k, *SHAPE)).astype(np.float32)
    if k == 2:
        x[:, :, 1] = np.abs(x[:, :, 1]) + 0.1  # stds are positive
    return x, rng.integers(0, 10, n)


def write_all(root, x, labels, shard_size=4, rank=0, world_size=1, fail_after=None, **kw):
    w = LatentStoreWriter(root, len(x), SHAPE, shard_size=shard_size, rank=rank,
                          world_size=world_size, num_copies=x.shape[1], **kw)
    written = []
    for k in w.pending_shards():
        if fail_after is not None and len(written) == fail_after:
            raise RuntimeError('simulated crash')
        s, e = w.shard_range(k)
        w.write_shard(k, x[s:e], labels[s:e])
        written.append(k)
    return w, written


@pytest.mark.parametrize('dtype,tol', [('float32', 0), ('float16', 1e-3), ('bfloat16', 8e-3)])
def test_round_trip(tmp_path, dtype, tol):
    x, labels = make_items(10)
    w, written = write_all(str(tmp_path), x, labels, dtype=dtype)
    assert written == [0, 1, 2]
    index = w.finalize()
    assert index['complete'] and index['num_items'] == 10 and index['dtype'] == dtype
    store = LatentStore(str(tmp_path))
    assert len(store) == 10
    np.testing.assert_array_equal(store.labels, labels)
    got = np.stack([store[i] for i in range(10)])
    assert got.dtype == np.float32 and got.shape == (10, 1, 2, *SHAPE)
    np.testing.assert_allclose(got, x, rtol=tol, atol=tol * 1e-2)
    np.testing.assert_array_equal(store[-1], store[9])
    with pytest.raises(IndexError):
        store[10]
    if dtype == 'bfloat16':
        # The same bits torch's bfloat16 rounding gives.
        ref = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(got, ref)
        assert np.load(tmp_path / 'shard_00000.npy').dtype == np.uint16


def test_index_fields(tmp_path):
    x, labels = make_items(5, copies=2)
    w, _ = write_all(str(tmp_path), x, labels, shard_size=2, dtype='float16',
                     scale_factor=0.18215, vae='my/vae', meta=dict(classes=['a', 'b']))
    w.finalize()
    index = json.loads((tmp_path / 'index.json').read_text())
    for key, value in dict(format='mmsora.latent_store', version=1, dtype='float16',
                           latent_shape=list(SHAPE), content='moments', num_copies=2,
                           scale_factor=0.18215, shift_factor=0.0, vae='my/vae',
                           shard_size=2, num_source_items=5, num_shards=3, num_items=5,
                           num_skipped=0, complete=True, meta=dict(classes=['a', 'b'])).items():
        assert index[key] == value, key
    assert [s['file'] for s in index['shards']] == [
        'shard_00000.npy', 'shard_00001.npy', 'shard_00002.npy']
    assert [(s['start'], s['stop'], s['count']) for s in index['shards']] == [
        (0, 2, 2), (2, 4, 2), (4, 5, 1)]


def test_reader_memory_maps(tmp_path):
    x, labels = make_items(8)
    write_all(str(tmp_path), x, labels)[0].finalize()
    store = LatentStore(str(tmp_path))
    assert store._arrays == {}  # nothing opened before it is asked for
    store[5]
    arr = store.shard_array(1)
    assert isinstance(arr, np.memmap) and arr.mode == 'r'
    assert list(store._arrays) == [(1, None)]


def test_damaged_store_files_are_named(tmp_path):
    """numpy's own words ('mmap length is greater than file size'; 'This file contains
    pickled (object) data' for garbage) did not say which file of the store."""
    x, labels = make_items(8)
    write_all(str(tmp_path), x, labels)[0].finalize()
    shard = sorted(glob.glob(str(tmp_path / 'shard_*.npy')))[0]
    data = open(shard, 'rb').read()
    for damaged in (data[:len(data) // 2], os.urandom(len(data))):
        open(shard, 'wb').write(damaged)
        with pytest.raises(ValueError, match=f"cannot read latent store file '{shard}': it "
                                             'is truncated or damaged'):
            LatentStore(str(tmp_path))[0]
    labels_file = sorted(glob.glob(str(tmp_path / 'labels_*.npy')))[0]
    os.remove(labels_file)
    with pytest.raises(FileNotFoundError, match=f"latent store file missing: '{labels_file}'"):
        LatentStore(str(tmp_path))


def test_skipped_items_and_empty_shards(tmp_path):
    x, labels = make_items(6)
    w = LatentStoreWriter(str(tmp_path), 6, SHAPE, shard_size=2, dtype='float32')
    w.write_shard(0, x[:1], labels[:1], skipped=['bad.png'])
    w.write_shard(1, x[1:1], labels[1:1], skipped=['b1.png', 'b2.png'])
    w.write_shard(2, x[1:3], labels[1:3])
    with pytest.raises(ValueError, match='1 items \\+ 0 skipped != 2'):
        w.write_shard(2, x[:1], labels[:1])
    index = w.finalize()
    assert index['num_items'] == 3 and index['num_skipped'] == 3
    store = LatentStore(str(tmp_path))
    np.testing.assert_array_equal(np.stack([store[i] for i in range(3)]), x[:3])
    np.testing.assert_array_equal(store.labels, labels[:3])


def test_incomplete_store_is_refused(tmp_path):
    x, labels = make_items(8)
    with pytest.raises(RuntimeError):
        write_all(str(tmp_path), x, labels, fail_after=1)
    with pytest.raises(FileNotFoundError, match='not finalized'):
        LatentStore(str(tmp_path))
    LatentStoreWriter(str(tmp_path), 8, SHAPE, shard_size=4).finalize()
    with pytest.raises(ValueError, match='incomplete \\(1 of 2 shards\\)'):
        LatentStore(str(tmp_path))
    assert len(LatentStore(str(tmp_path), allow_incomplete=True)) == 4


def test_resume_after_crash(tmp_path):
    x, labels = make_items(11)
    ref_root, root = str(tmp_path / 'ref'), str(tmp_path / 'crash')
    write_all(ref_root, x, labels, shard_size=3)[0].finalize()

    with pytest.raises(RuntimeError):
        write_all(root, x, labels, shard_size=3, fail_after=2)
    # The crash also left a half-written temp file and a stray (unlisted) shard file.
    open(os.path.join(root, 'shard_00002.npy.tmp.12345'), 'wb').write(b'\x93NUMPY half')
    open(os.path.join(root, 'shard_00003.npy'), 'wb').write(b'partial')
    mtimes = {k: os.stat(os.path.join(root, f'shard_0000{k}.npy')).st_mtime_ns for k in (0, 1)}

    w, written = write_all(root, x, labels, shard_size=3)
    assert written == [2, 3]  # finished shards are not redone
    assert {k: os.stat(os.path.join(root, f'shard_0000{k}.npy')).st_mtime_ns
            for k in (0, 1)} == mtimes
    assert not glob.glob(os.path.join(root, '*.tmp.*'))
    w.finalize()
    a, b = LatentStore(ref_root), LatentStore(root)
    assert len(a) == len(b) == 11
    np.testing.assert_array_equal(a.labels, b.labels)
    for i in range(11):
        np.testing.assert_array_equal(a[i], b[i])

    # Nothing left to do on another rerun.
    assert write_all(root, x, labels, shard_size=3)[1] == []


def test_resume_with_other_settings_is_refused(tmp_path):
    x, labels = make_items(8)
    with pytest.raises(RuntimeError):
        write_all(str(tmp_path), x, labels, fail_after=1)
    with pytest.raises(ValueError, match="dtype='float16'.*dtype='float32'"):
        LatentStoreWriter(str(tmp_path), 8, SHAPE, shard_size=4, dtype='float32')


def test_a_run_that_fails_before_its_first_shard_leaves_no_parts(tmp_path):
    """A conversion refused at its first item left an empty parts/, which then read as
    'extraction not finalized' and made the folder look like a store begun."""
    x, labels = make_items(8)
    with pytest.raises(RuntimeError):
        write_all(str(tmp_path / 'store'), x, labels, fail_after=0)
    assert os.listdir(tmp_path / 'store') == []
    with pytest.raises(RuntimeError):
        write_all(str(tmp_path / 'store'), x, labels, fail_after=1)
    assert os.listdir(tmp_path / 'store' / 'parts') == ['rank-00000.json']


def test_rerun_with_other_extraction_settings_is_refused(tmp_path):
    """The extraction settings in ``meta`` (frame stride, fps, text encoder): a rerun
    into the same folder with others kept the old latents and said nothing, after a
    crash as after a finished run."""
    x, labels = make_items(8)
    with pytest.raises(RuntimeError):
        write_all(str(tmp_path), x, labels, fail_after=1, meta=dict(frame_stride=3))
    with pytest.raises(ValueError, match=r"holds a latent store written with frame_stride=3 "
                                         r"\(in parts/rank-00000.json\); this run has "
                                         r"frame_stride=2: use another output folder"):
        LatentStoreWriter(str(tmp_path), 8, SHAPE, shard_size=4, meta=dict(frame_stride=2))
    w, written = write_all(str(tmp_path), x, labels, meta=dict(frame_stride=3))  # resumes
    assert written == [1]
    w.finalize()
    w, written = write_all(str(tmp_path), x, labels, meta=dict(frame_stride=3))
    assert written == []  # done: the same settings find nothing to do
    with pytest.raises(ValueError, match=r'written with frame_stride=3 \(in parts/rank-0000'
                                         r'0.json\); this run has frame_stride=None'):
        LatentStoreWriter(str(tmp_path), 8, SHAPE, shard_size=4)


def test_multi_rank_writers_and_finalize(tmp_path):
    x, labels = make_items(13, copies=2)
    single = str(tmp_path / 'single')
    write_all(single, x, labels, shard_size=3)[0].finalize()

    multi = str(tmp_path / 'multi')
    w0, done0 = write_all(multi, x, labels, shard_size=3, rank=0, world_size=2)
    w1, done1 = write_all(multi, x, labels, shard_size=3, rank=1, world_size=2)
    assert done0 == [0, 2, 4] and done1 == [1, 3]
    assert sorted(os.listdir(os.path.join(multi, 'parts'))) == ['rank-00000.json',
                                                               'rank-00001.json']
    index = w0.finalize()  # rank 0 after a barrier
    assert index['complete'] and index['num_items'] == 13
    a, b = LatentStore(single), LatentStore(multi)
    np.testing.assert_array_equal(a.labels, b.labels)
    for i in range(13):
        np.testing.assert_array_equal(a[i], b[i])


def test_resume_with_another_world_size(tmp_path):
    x, labels = make_items(12)
    root = str(tmp_path)
    # 3 ranks, rank 2 crashed before writing anything.
    for r in (0, 1):
        write_all(root, x, labels, shard_size=2, rank=r, world_size=3)
    # Rerun with 2 ranks: only shards 2 and 5 (rank 2's) remain.
    _, d0 = write_all(root, x, labels, shard_size=2, rank=0, world_size=2)
    w1, d1 = write_all(root, x, labels, shard_size=2, rank=1, world_size=2)
    assert sorted(d0 + d1) == [2, 5]
    assert w1.finalize()['complete']
    store = LatentStore(root)
    np.testing.assert_array_equal(np.stack([store[i] for i in range(12)]),
                                  x.astype(np.float16).astype(np.float32))


def make_text(n, seq=5, dim=3, pooled=2, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.arange(seq)[None] < rng.integers(1, seq + 1, n)[:, None]
    return dict(text_embeds=rng.standard_normal((n, seq, dim)).astype(np.float32),
                text_mask=mask,
                pooled_text_embeds=rng.standard_normal((n, pooled)).astype(np.float32))


def write_text_store(root, n, shard_size, dtype, copies=1):
    """A store of ``n`` items with (5, 3) text tokens and 2-wide pooled embeddings;
    returns the text written."""
    x, labels = make_items(n, copies=copies)
    text = make_text(n)
    w = LatentStoreWriter(root, n, SHAPE, shard_size=shard_size, dtype=dtype,
                          num_copies=copies, text_shape=(5, 3), pooled_dim=2)
    for k in w.pending_shards():
        s, e = w.shard_range(k)
        w.write_shard(k, x[s:e], labels[s:e], text={f: v[s:e] for f, v in text.items()})
    w.finalize()
    return text


def test_text_embeddings_round_trip_and_dataset(tmp_path):
    from mmsora.datasets import PackedLatentDataset
    text = write_text_store(str(tmp_path), 7, shard_size=3, dtype='float32')
    store = LatentStore(str(tmp_path))
    assert store.text_shape == (5, 3) and store.pooled_dim == 2
    for i in range(7):
        got = store.text(i)
        for field, value in text.items():
            np.testing.assert_array_equal(got[field], value[i])
        assert got['text_mask'].dtype == bool
    item = PackedLatentDataset(str(tmp_path), seed=0)[4]
    assert item['text_embeds'].shape == (5, 3) and item['text_mask'].dtype == torch.bool
    assert torch.equal(item['pooled_text_embeds'], torch.from_numpy(text['pooled_text_embeds'][4]))


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_dataset_hands_text_on_in_the_stored_dtype(tmp_path, dtype):
    """Text embeddings leave PackedLatentDataset in the store's dtype (a T5-XXL item
    was handed from the workers to the device in float32, twice its bytes), the same
    numbers the float32 reader gives, and batch with the default collate."""
    from torch.utils.data import default_collate
    from mmsora.datasets import PackedLatentDataset
    text = write_text_store(str(tmp_path), 5, shard_size=2, dtype=dtype, copies=2)
    store = LatentStore(str(tmp_path))
    dataset = PackedLatentDataset(str(tmp_path), seed=0)
    for i in range(5):
        item, decoded = dataset[i], store.text(i)
        for field in ('text_embeds', 'pooled_text_embeds'):
            assert item[field].dtype == getattr(torch, dtype)
            assert torch.equal(item[field].float(), torch.from_numpy(decoded[field]))
        assert item['text_mask'].dtype == torch.bool
        assert torch.equal(item['text_mask'], torch.from_numpy(text['text_mask'][i]))
        assert item['latents'].dtype == torch.float32
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch['text_embeds'].shape == (4, 5, 3)
    assert batch['text_embeds'].dtype == getattr(torch, dtype)
    # A shard written on a big-endian machine reads the same (torch takes native order).
    from mmsora.datasets.store_format import stored_tensor
    bits = torch.tensor([1.0, -2.5]).to(torch.bfloat16).view(torch.int16).numpy()
    assert torch.equal(stored_tensor(bits.view(np.uint16).astype('>u2'), 'bfloat16').float(),
                       torch.tensor([1.0, -2.5]))
    assert torch.equal(stored_tensor(np.array([1.5], '>f2'), 'float16'),
                       torch.tensor([1.5], dtype=torch.float16))
    # One copy read alone is that copy of the whole item.
    for i in range(5):
        for copy in range(2):
            np.testing.assert_array_equal(store.read(i, copy), store[i][copy])


def test_text_shapes_are_checked(tmp_path):
    x, labels = make_items(2)
    w = LatentStoreWriter(str(tmp_path / 'a'), 2, SHAPE, text_shape=(5, 3))
    with pytest.raises(ValueError, match='keeps text'):
        w.write_shard(0, x, labels)
    bad = make_text(2, seq=4)
    with pytest.raises(ValueError, match=r'text_embeds has shape \(2, 4, 3\), expected'):
        w.write_shard(0, x, labels, text=bad)
    plain = LatentStoreWriter(str(tmp_path / 'b'), 2, SHAPE)
    with pytest.raises(ValueError, match='keeps no text'):
        plain.write_shard(0, x, labels, text=make_text(2))
    plain.write_shard(0, x, labels)
    plain.finalize()
    assert LatentStore(str(tmp_path / 'b')).text(0) is None
    # Resuming a store with other text settings is refused.
    with pytest.raises(ValueError, match='text_shape'):
        LatentStoreWriter(str(tmp_path / 'b'), 2, SHAPE, text_shape=(5, 3)).done_shards()


def test_other_source_items_are_refused(tmp_path):
    """The source items' fingerprint: a resumed writer of other items of the same number
    was taken as the same store."""
    from mmsora.datasets.store_records import SourceChangedError
    x, labels = make_items(8)
    root = str(tmp_path)
    with pytest.raises(RuntimeError):
        write_all(root, x, labels, fail_after=1, source_fingerprint='a' * 64)
    with pytest.raises(SourceChangedError, match=r"holds a latent store of other source items "
                                                 r"\(source_fingerprint aaaaaaaaaaaa\.\.\. in "
                                                 r"parts/rank-00000.json; this run has "
                                                 r"bbbbbbbbbbbb\.\.\.\): they changed"):
        LatentStoreWriter(root, 8, SHAPE, shard_size=4, source_fingerprint='b' * 64)
    with pytest.raises(SourceChangedError):  # another rank reads it in the part it lacks
        LatentStoreWriter(root, 8, SHAPE, shard_size=4, rank=1, world_size=2,
                          source_fingerprint='b' * 64).pending_shards()
    # not compared where one side has none (stores begun before it was recorded)
    assert LatentStoreWriter(root, 8, SHAPE, shard_size=4).pending_shards() == [1]
    part = os.path.join(root, 'parts', 'rank-00000.json')
    data = json.load(open(part))
    del data['source_fingerprint']
    json.dump(data, open(part, 'w'))
    w, written = write_all(root, x, labels, source_fingerprint='b' * 64)
    # A store begun without one keeps none (as with LATER_META_KEYS): this run's would
    # say shard 0 came from its items, unchecked, and refuse a run with their true ones.
    assert written == [1] and 'source_fingerprint' not in w.finalize()
    assert write_all(root, x, labels, source_fingerprint='a' * 64)[1] == []


def test_read_store_progress(tmp_path):
    """What a rerun finds, read before the latent shape is known (no writer built)."""
    from mmsora.datasets.store_records import read_store_progress
    x, labels = make_items(8)
    root = str(tmp_path / 'store')
    settings = dict(dtype='float16', num_source_items=8, source_fingerprint='f' * 64)
    assert read_store_progress(root, settings) is None
    with pytest.raises(RuntimeError):
        write_all(root, x, labels, fail_after=1, source_fingerprint='f' * 64,
                  text_shape=None)
    found = read_store_progress(root, settings, meta={})
    assert found['done'] == [0] and found['num_shards'] == 2 and not found['complete']
    assert found['num_items'] == 4 and found['header']['shard_size'] == 4
    with pytest.raises(ValueError, match="written with dtype='float16'.*dtype='float32'"):
        read_store_progress(root, dict(settings, dtype='float32'))
    with pytest.raises(ValueError, match='written with frame_stride=None .*frame_stride=2'):
        read_store_progress(root, settings, meta=dict(frame_stride=2))
    w, _ = write_all(root, x, labels, source_fingerprint='f' * 64)
    assert not read_store_progress(root, settings)['complete']  # parts only: not finalized
    w.finalize()
    assert read_store_progress(root, settings)['complete']


def test_a_setting_known_in_part(tmp_path):
    """The text length is known before the text encoder loads, not its width."""
    from mmsora.datasets.store_records import read_store_progress
    x, labels = make_items(2)
    w = LatentStoreWriter(str(tmp_path), 2, SHAPE, text_shape=(5, 3))
    w.write_shard(0, x, labels, text=make_text(2, pooled=0))
    w.finalize()
    assert read_store_progress(str(tmp_path), dict(text_shape=[5, None]))['complete']
    with pytest.raises(ValueError, match=r'written with text_shape=\[5, 3\] \(in index.json\); '
                                         r'this run has text_shape=\[7, 3\]'):
        read_store_progress(str(tmp_path), dict(text_shape=[7, None]))


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16', 'float32'])
def test_a_tensor_in_the_stored_dtype_is_not_copied(dtype):
    """It went through a float32 copy (3x a float16 shard) before being stored."""
    from mmsora.datasets.store_format import TORCH_DTYPES, encode_dtype
    x = torch.randn(6, 5)
    kept = x.to(TORCH_DTYPES[dtype])
    stored = encode_dtype(kept, dtype)
    assert stored.ctypes.data == kept.data_ptr()
    np.testing.assert_array_equal(stored, encode_dtype(x.numpy(), dtype))  # same rounding

"""Finished shards whose files are cut short or missing (walk-through: a user on
unreliable machines). A rerun of tools/extract_features.py kept them (a complete store:
'nothing to do'), and training met them when it first read them, hours in, with the
advice to extract the whole store again. Now a rerun checks every recorded shard's files
by size and .npy header (no data read) and encodes the damaged ones again, and a store
opened for training names them before the run starts."""
import json
import os
import os.path as osp
import shutil
from unittest import mock

import numpy as np
import pytest

from mmsora.datasets import LatentStore, LatentStoreWriter, PackedLatentDataset
from mmsora.datasets.store_records import read_store_progress
from mmsora.models.vaes import AutoencoderKLWrapper
from tests.extract_tools import interrupted, run_extract


def store_bytes(root):
    """``{relative path: bytes}`` of every file of a store."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            out[osp.relpath(path, root)] = open(path, 'rb').read()
    return out


def cut(path, size):
    with open(path, 'r+b') as f:
        f.truncate(size)


def counting_encoder(calls):
    real = AutoencoderKLWrapper.encode_moments

    def encode_moments(self, x):
        calls.append(len(x))
        return real(self, x)
    return encode_moments


def test_a_complete_store_with_a_truncated_shard_is_mended_by_a_rerun(
        image_folder, tiny_vae_dir, tmp_path, capsys):
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)  # 7 inputs, shards of 2: 4 shards
    before = store_bytes(out)
    shard = osp.join(out, 'shard_00001.npy')
    size = os.path.getsize(shard)
    cut(shard, size - 100)
    capsys.readouterr()
    calls = []
    with mock.patch.object(AutoencoderKLWrapper, 'encode_moments', counting_encoder(calls)):
        summary = run_extract(image_folder, out, tiny_vae_dir)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f'extract_features.py: shard_00001.npy: truncated ({size - 100} '
                          f'of {size} bytes): encoding it again')
    assert printed[1] == f'extract_features.py: resuming: 3 of 4 shards done at {out}'
    assert summary['complete'] and summary['shards_written'] == 1
    assert calls == [2]  # the damaged shard's items alone
    assert store_bytes(out) == before  # the store as it was, index and all
    # and a rerun now has nothing to do
    assert run_extract(image_folder, out, tiny_vae_dir)['shards_written'] == 0


def test_a_damaged_shard_makes_a_complete_store_incomplete_at_once(
        image_folder, tiny_vae_dir, tmp_path):
    """A rerun stopped before it wrote the shard again leaves an index that no longer
    counts it (it said complete)."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    os.remove(osp.join(out, 'labels_00002.npy'))
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir), after=0)
    with open(osp.join(out, 'index.json')) as f:
        index = json.load(f)
    assert not index['complete'] and [s['id'] for s in index['shards']] == [0, 1, 3]
    assert run_extract(image_folder, out, tiny_vae_dir)['complete']
    assert len(LatentStore(out)) == 6


def test_an_interrupted_store_encodes_its_damaged_finished_shards_again(
        image_folder, tiny_vae_dir, tmp_path, capsys):
    ref, out = str(tmp_path / 'ref'), str(tmp_path / 'out')
    run_extract(image_folder, ref, tiny_vae_dir)
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir), after=2)
    cut(osp.join(out, 'shard_00000.npy'), 1000)  # a header, then part of the data
    cut(osp.join(out, 'labels_00001.npy'), 20)   # not even a whole header
    capsys.readouterr()
    summary = run_extract(image_folder, out, tiny_vae_dir)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith('extract_features.py: shard_00000.npy: truncated (1000 of ')
    assert printed[1].startswith('extract_features.py: labels_00001.npy: damaged (20 bytes, '
                                 'no .npy header')
    assert printed[1].endswith('): encoding it again')
    assert printed[2] == f'extract_features.py: resuming: 0 of 4 shards done at {out}'
    assert summary['complete'] and summary['shards_written'] == 4
    assert store_bytes(out) == store_bytes(ref)


def write_text_store(root, shard_size=2, n=5):
    rng = np.random.default_rng(0)
    w = LatentStoreWriter(root, n, (4, 2, 2), shard_size=shard_size, text_shape=(3, 8),
                          pooled_dim=5, dtype='float32')
    for k in w.owned_shards():
        m = len(range(*w.shard_range(k)))
        w.write_shard(k, rng.standard_normal((m, 1, 2, 4, 2, 2)), list(range(m)), text=dict(
            text_embeds=rng.standard_normal((m, 3, 8)), text_mask=np.ones((m, 3), bool),
            pooled_text_embeds=rng.standard_normal((m, 5))))
    w.finalize()
    return w


def test_every_file_a_shard_lists_is_checked(tmp_path):
    """Text embeddings, masks and pooled embeddings too: the writer writes a shard with
    any of them cut short again."""
    root = str(tmp_path / 'store')
    write_text_store(root)
    for name in ('text_00001.npy', 'text_mask_00002.npy', 'pooled_00000.npy'):
        path = osp.join(root, name)
        cut(path, os.path.getsize(path) - 1)
    progress = read_store_progress(root, {})
    assert progress['done'] == [] and not progress['complete']
    assert {k: v[:2] for k, v in progress['damaged'].items()} == {
        0: ('pooled_00000.npy', 'truncated'), 1: ('text_00001.npy', 'truncated'),
        2: ('text_mask_00002.npy', 'truncated')}
    w = LatentStoreWriter(root, 5, (4, 2, 2), shard_size=2, text_shape=(3, 8),
                          pooled_dim=5, dtype='float32')
    assert w.pending_shards() == [0, 1, 2]
    assert not w.finalize()['complete']


def test_a_file_of_another_shape_is_damaged(tmp_path):
    """Whole files of the wrong shape (another shard's labels copied over) too."""
    root = str(tmp_path / 'store')
    write_text_store(root)
    shutil.copy(osp.join(root, 'labels_00002.npy'), osp.join(root, 'labels_00000.npy'))
    progress = read_store_progress(root, {})
    assert progress['done'] == [1, 2]
    assert progress['damaged'] == {0: ('labels_00000.npy', 'damaged',
                                       'shape (1,), the index says (2,)')}


def test_a_sound_record_is_taken_over_a_stale_one(tmp_path):
    """A shard written again keeps the record that matches its files, whichever index
    part lists it last (a rerun with another number of processes)."""
    root = str(tmp_path / 'store')
    write_text_store(root)
    with open(osp.join(root, 'parts', 'rank-00000.json')) as f:
        part = json.load(f)
    part['shards'] = [dict(part['shards'][1], count=1, skipped=['x'])]
    with open(osp.join(root, 'parts', 'rank-00003.json'), 'w') as f:
        json.dump(part, f)
    progress = read_store_progress(root, {})
    assert progress['complete'] and progress['damaged'] == {}
    assert progress['shards'][1]['count'] == 2


def test_a_store_with_a_damaged_shard_is_refused_before_training(
        image_folder, tiny_vae_dir, tmp_path):
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    shard = osp.join(out, 'shard_00001.npy')
    size = os.path.getsize(shard)
    cut(shard, 200)
    os.remove(osp.join(out, 'shard_00002.npy'))
    with mock.patch('numpy.load', side_effect=AssertionError('data read')):
        with pytest.raises(ValueError) as err:
            LatentStore(out)
    assert str(err.value) == (
        f"cannot read latent store file '{shard}': it is truncated or damaged (truncated: "
        f"200 of {size} bytes); 2 of 3 shards are damaged: shard_00001.npy, "
        f"shard_00002.npy; rerun the tools/extract_features.py command that wrote "
        f"'{out}' (the same command): it checks every shard and writes the damaged ones "
        'again (or restore the files)')
    cut(shard, size)  # (zeros: whole again by its size) the missing one alone
    with pytest.raises(FileNotFoundError, match="latent store file missing: '.*shard_00002"):
        LatentStore(out)
    with pytest.raises(FileNotFoundError, match='shard_00002.npy'):
        PackedLatentDataset(out)
    run_extract(image_folder, out, tiny_vae_dir)  # the advice mends it
    assert len(PackedLatentDataset(out)) == 6


def test_each_rank_encodes_its_damaged_shards_again(image_folder, tiny_vae_dir, tmp_path):
    """Ranks 1 then 0 of 2 (simulated) on a store one process wrote: each writes again
    the damaged shards it owns, and rank 0's index counts them all."""
    import torch
    from tests.extract_tools import extract
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    before = store_bytes(out)
    cut(osp.join(out, 'shard_00001.npy'), 500)  # rank 1's
    os.remove(osp.join(out, 'labels_00002.npy'))  # rank 0's
    written = {}
    for rank in (1, 0):
        with mock.patch.object(extract, 'init_dist',
                               return_value=(rank, 2, torch.device('cpu'))):
            calls = []
            with mock.patch.object(AutoencoderKLWrapper, 'encode_moments',
                                   counting_encoder(calls)):
                summary = run_extract(image_folder, out, tiny_vae_dir)
            written[rank] = calls
    assert written == {1: [2], 0: [2]}
    assert summary['complete'] and summary['shards_written'] == 1
    after = store_bytes(out)
    assert json.loads(after.pop('parts/rank-00001.json'))['shards'] == [
        json.loads(before['index.json'])['shards'][1]]  # its part: the shard it wrote
    for name in ('parts/rank-00000.json', 'index.json'):  # (parts: world_size=2 now)
        assert json.loads(after.pop(name))['shards'] == json.loads(before.pop(name))[
            'shards']
    assert after == before


def test_a_converted_store_is_mended_by_its_own_command(tmp_path, capsys):
    """The advice names the tool that wrote the store, and its rerun mends it,
    saying so."""
    from tests.extract_tools import convert
    feats, labels = tmp_path / 'f', tmp_path / 'l'
    feats.mkdir()
    labels.mkdir()
    for i in range(5):
        np.save(feats / f'{i}.npy', np.full((1, 4, 4, 4), i, np.float32))
        np.save(labels / f'{i}.npy', np.array([i % 2]))
    out = str(tmp_path / 'packed')
    argv = ['--features-dir', str(feats), '--labels-dir', str(labels), '--out', out,
            '--dtype', 'float32', '--shard-size', '2']
    convert.main(argv)
    before = store_bytes(out)
    cut(osp.join(out, 'shard_00001.npy'), 300)
    with pytest.raises(ValueError, match='rerun the tools/convert_fastdit_features.py '
                                         'command'):
        LatentStore(out)
    capsys.readouterr()
    convert.main(argv)
    assert store_bytes(out) == before
    assert 'convert_fastdit_features.py: shard_00001.npy: truncated (' in capsys.readouterr().out

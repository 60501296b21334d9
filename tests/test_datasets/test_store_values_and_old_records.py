"""The latent store's rule for NaN / inf, on the values as stored, applied by the tools
before they write (an item past float16's range is skipped by extract_features.py and
named by its file in convert_fastdit_features.py), and what a rerun records when it
writes shards into a store of an older mmsora (its record kept, theirs beside it)."""
import glob
import json
import os
import os.path as osp
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from mmsora.datasets import LatentStore, LatentStoreWriter, latent_store_writer, store_format
from mmsora.datasets.store_format import nonfinite_items
from mmsora.datasets.store_records import SourceChangedError, read_store_progress
from mmsora.models.vaes import AutoencoderKLWrapper
from mmsora.utils.cli import UserError
from tests.extract_tools import convert, interrupted, run_extract, shard_mtimes
from tests.test_datasets.test_extract_features import write_fastdit_features

pytestmark = pytest.mark.usefixtures('fresh_notes')


# --------------------------------------------------------------------------- #
#                      1. NaN / inf as stored, one rule                        #
# --------------------------------------------------------------------------- #
def test_the_rule_counts_values_past_the_stored_range():
    x = torch.zeros(3, 2, 4)
    x[1, 0, 0] = 1e5  # finite in float32, inf in float16
    x[2, 1, 3] = float('nan')
    fields = dict(latents=x, text_mask=torch.ones(3, 4, dtype=torch.bool))
    assert nonfinite_items(fields, 'float32') == {2: ('latents', 1, 8)}
    assert nonfinite_items(fields, 'float16') == {1: ('latents', 1, 8),
                                                  2: ('latents', 1, 8)}
    assert nonfinite_items(dict(latents=x.numpy()), 'bfloat16') == {2: ('latents', 1, 8)}


def _white_picture(image_folder):
    Image.new('RGB', (24, 24), (255, 255, 255)).save(osp.join(image_folder, 'a', 'white.png'))


def _white_gives(value):
    """A VAE's encode_moments whose mean is ``value`` for an all-white picture."""
    real = AutoencoderKLWrapper.encode_moments

    def encode_moments(self, images):
        mean, std = real(self, images)
        white = (images == 1).flatten(1).all(1)
        return mean.masked_fill(white.view(-1, 1, 1, 1), value), std
    return encode_moments


_past_float16_on_white = _white_gives(1e5)  # (finite in float32)


@pytest.mark.parametrize('store, value', [('samples', 1e5), ('moments', 1e5),
                                          ('moments', float('nan'))])
def test_an_item_nan_or_past_float16_is_skipped_and_the_run_goes_on(
        image_folder, tiny_vae_dir, tmp_path, capsys, store, value):
    """A VAE that overflows on one input (half precision, a broken picture) gave NaN
    latents that were written into the store without a word, and training met them as
    a NaN loss hours later: the item is skipped and named with its reason, as an
    unreadable input is. --store samples --dtype float16: the sample of a mean of 1e5
    passed the tool's check (float32, where it was drawn) and the writer then refused
    its whole shard, stopping the run with a traceback."""
    _white_picture(image_folder)
    out = str(tmp_path / 'store')
    with mock.patch.object(AutoencoderKLWrapper, 'encode_moments', _white_gives(value)):
        summary = run_extract(image_folder, out, tiny_vae_dir, '--dtype', 'float16',
                              '--store', store)
    assert summary['complete'] and summary['num_items'] == 6
    assert summary['skipped_this_run'] == ['a/white.png', 'b/broken.png']
    why = ("its latents hold NaN or inf (float16): the encoder overflowed or the input is "
           "broken (or values are past float16's range, 65504: --dtype bfloat16 keeps them)")
    printed = capsys.readouterr()
    assert f'extract_features.py: skipping a/white.png: {why}\n' in printed.out + printed.err
    assert f'a/white.png ({why})' in printed.out
    store_ = LatentStore(out)
    assert all(np.isfinite(store_[i]).all() for i in range(len(store_)))
    # shard 1 holds a/a2.png and a/white.png: the one, and the other named as left out
    shard = store_.index['shards'][1]
    assert shard['count'] == 1 and shard['skipped'] == ['a/white.png']
    assert shard['skipped_why'] == [why]


def test_bfloat16_keeps_what_float16_cannot(image_folder, tiny_vae_dir, tmp_path):
    _white_picture(image_folder)
    out = str(tmp_path / 'store')
    with mock.patch.object(AutoencoderKLWrapper, 'encode_moments', _past_float16_on_white):
        summary = run_extract(image_folder, out, tiny_vae_dir, '--dtype', 'bfloat16',
                              '--store', 'samples')
    assert summary['num_items'] == 7 and summary['skipped_this_run'] == ['b/broken.png']


def test_extraction_scans_each_shard_once(image_folder, tiny_vae_dir, tmp_path):
    """extract_features.py scanned each shard for NaN / inf to skip items, and the writer
    scanned it again (about 1 s a 1024-item shard of T5-XXL tokens); a writer not told
    its values were checked still scans them."""
    scans = mock.Mock(wraps=store_format.nonfinite_stored)
    with mock.patch.object(store_format, 'nonfinite_stored', scans), \
            mock.patch.object(latent_store_writer, 'nonfinite_stored', scans):
        summary = run_extract(image_folder, str(tmp_path / 'store'), tiny_vae_dir)
        assert summary['shards_written'] == 4 and scans.call_count == 4
        writer = LatentStoreWriter(str(tmp_path / 'other'), 2, (4, 2, 2))
        x = np.zeros((2, 1, 2, 4, 2, 2), np.float32)
        x[1, 0, 0, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match='shard 0: item 1 holds NaN or inf'):
            writer.write_shard(0, x, [0, 1])
    assert scans.call_count == 5


def test_convert_names_the_file_past_float16(tmp_path):
    """The writer's refusal named 'shard 0: item 2' (a row of a shard), not the file."""
    feats, labels = write_fastdit_features(tmp_path)
    path = feats / '6.npy'
    x = np.load(path)
    x[0, 1, 2, 3] = -1e5
    np.save(path, x)
    def argv(out, dtype):
        return ['--features-dir', str(feats), '--labels-dir', str(labels), '--out',
                str(tmp_path / out), '--shard-size', '4', '--dtype', dtype]

    with pytest.raises(UserError) as info:
        convert.main(argv('out', 'float16'))
    message = str(info.value)
    assert message.startswith(
        f"{str(path)!r} (item 6) holds values past float16's range (1 of 64 values, largest "
        '100000): convert with --dtype bfloat16 or float32, or leave its feature and label '
        'files out; ')
    assert 'shard' not in message.split('; ')[0] and '\n' not in message
    assert convert.main(argv('bf16', 'bfloat16'))['complete']


def test_convert_scans_each_item_once(tmp_path):
    """convert_fastdit_features.py scans each item as it loads it (to name its file);
    the writer scanned every shard of them again."""
    feats, labels = write_fastdit_features(tmp_path, count=8)
    scans = mock.Mock(wraps=store_format.nonfinite_stored)
    with mock.patch.object(store_format, 'nonfinite_stored', scans), \
            mock.patch.object(latent_store_writer, 'nonfinite_stored', scans):
        convert.main(['--features-dir', str(feats), '--labels-dir', str(labels), '--out',
                      str(tmp_path / 'out'), '--shard-size', '4', '--dtype', 'float16'])
    assert scans.call_count == 8  # (one an item; 10 with the writer's two shards)


# --------------------------------------------------------------------------- #
#              2. shards written into a store of an older mmsora               #
# --------------------------------------------------------------------------- #
def _as_an_older_mmsora_wrote_it(out, part_meta=True):
    """``out``'s index and parts with no class names (recorded only by later
    versions); ``part_meta`` False: parts with no meta at all (Dec 3)."""
    for path in glob.glob(osp.join(out, 'parts', '*.json')) + [osp.join(out, 'index.json')]:
        with open(path) as f:
            data = json.load(f)
        del data['meta']['classes']
        if not part_meta and 'parts' in path:
            del data['meta']
        with open(path, 'w') as f:
            json.dump(data, f)


def _index(out):
    with open(osp.join(out, 'index.json')) as f:
        return json.load(f)


def test_a_repair_keeps_the_older_record(image_folder, tiny_vae_dir, tmp_path):
    """A rerun that wrote a damaged shard of an older store again wrote this run's meta
    over the store's: the index said every shard was written with this run's class
    names, of which the older shards record none."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    _as_an_older_mmsora_wrote_it(out)
    old_meta = _index(out)['meta']
    with open(osp.join(out, 'shard_00001.npy'), 'r+b') as f:
        f.truncate(100)
    mtimes = shard_mtimes(out)
    summary = run_extract(image_folder, out, tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 1
    assert sorted(p for p, t in shard_mtimes(out).items() if mtimes[p] != t) == [
        osp.join(out, 'labels_00001.npy'), osp.join(out, 'shard_00001.npy')]
    index = _index(out)
    assert index['meta'] == old_meta
    # the shard written again records the class names it was written with
    assert [s.get('meta') for s in index['shards']] == [None, {'classes': ['a', 'b']},
                                                        None, None]
    with open(osp.join(out, 'parts', 'rank-00000.json')) as f:
        part = json.load(f)
    assert part['meta'] == old_meta and part['shards'] == index['shards']
    assert len(LatentStore(out)) == 6
    assert run_extract(image_folder, out, tiny_vae_dir)['shards_written'] == 0


def test_a_shard_written_with_other_settings_than_this_run_is_refused(
        image_folder, tiny_vae_dir, tmp_path):
    """What the shards record of theirs is checked as the store's record is."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    _as_an_older_mmsora_wrote_it(out)
    with open(osp.join(out, 'shard_00002.npy'), 'r+b') as f:
        f.truncate(100)
    run_extract(image_folder, out, tiny_vae_dir)  # (shard 2 records classes [a, b])
    os.rename(osp.join(image_folder, 'b'), osp.join(image_folder, 'c'))  # (renamed)
    with pytest.raises(UserError, match=r"written with classes=\['a', 'b'\] \(in "
                       r"(index|parts/rank-00000)\.json\); this run has classes=\['a', "
                       r"'c'\]: use another output folder or the same settings"):
        run_extract(image_folder, out, tiny_vae_dir)


def test_a_repair_stopped_before_its_shard_is_written_goes_on(image_folder, tiny_vae_dir,
                                                             tmp_path):
    """A store whose parts record no settings (an older mmsora's) is vouched for by its
    complete index alone: a repair says the index is incomplete before it writes, and a
    repair stopped then was refused as a half-done store of an older mmsora."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    _as_an_older_mmsora_wrote_it(out, part_meta=False)
    with open(osp.join(out, 'shard_00001.npy'), 'r+b') as f:
        f.truncate(100)
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir), after=0)
    assert not _index(out)['complete']
    summary = run_extract(image_folder, out, tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 1
    assert 'classes' not in _index(out)['meta'] and len(LatentStore(out)) == 6


def _older_two_rank_store(root, damaged):
    """A store written by ranks 0 and 1 (4 shards of 2 items: rank 1 owns 1 and 3) as an
    older mmsora left it (parts with no meta), shard ``damaged`` cut short."""
    for rank in (0, 1):
        writer = _two_rank_writer(root, rank)
        for k in writer.pending_shards():
            writer.write_shard(k, np.zeros((2, 1, 2, 4, 2, 2), np.float32), [0, 1])
    assert _two_rank_writer(root, 0).finalize()['complete']
    _as_an_older_mmsora_wrote_it(root, part_meta=False)
    with open(osp.join(root, f'shard_{damaged:05d}.npy'), 'r+b') as f:
        f.truncate(100)


def _two_rank_writer(root, rank, world_size=2):
    return LatentStoreWriter(root, 8, (4, 2, 2), shard_size=2, rank=rank,
                             world_size=world_size, meta=dict(size=2, classes=['a', 'b']))


def _repair(root, world_size):
    """Each rank writes its pending shards again, then rank 0 finalizes."""
    writers = [_two_rank_writer(root, rank, world_size) for rank in range(world_size)]
    for writer in writers:
        for k in writer.pending_shards():
            writer.write_shard(k, np.ones((2, 1, 2, 4, 2, 2), np.float32), [0, 1])
    return writers[0].finalize()


@pytest.mark.parametrize('damaged', [0, 1])
def test_a_stopped_repair_of_a_store_of_two_ranks_goes_on(tmp_path, damaged):
    """A rerun with two ranks finalizes first (the index says incomplete: the damaged
    shard left out) and stops: the next run was refused as a half-done store of an
    older mmsora, the part of the rank that finalized alone given the index's meta."""
    root = str(tmp_path / 'store')
    _older_two_rank_store(root, damaged)
    old_meta = _index(root)['meta']
    _two_rank_writer(root, 1)  # (rank 1 reads the store too)
    assert not _two_rank_writer(root, 0).finalize()['complete']  # ... then stops
    assert read_store_progress(root, {}, dict(size=2, classes=['a', 'b']))['damaged']
    assert _two_rank_writer(root, damaged).pending_shards() == [damaged]
    index = _repair(root, 2)
    assert index['complete'] and index['meta'] == old_meta
    assert [s.get('meta') for s in index['shards']] == [
        {'classes': ['a', 'b']} if k == damaged else None for k in range(4)]
    assert len(LatentStore(root)) == 8


@pytest.mark.parametrize('damaged', [0, 1])
def test_a_stopped_repair_by_one_process_of_a_store_of_two_ranks_goes_on(tmp_path, damaged):
    """The same store repaired by one process (world size 1): no writer of this run owns
    parts/rank-00001.json, so no shard written rewrites it."""
    root = str(tmp_path / 'store')
    _older_two_rank_store(root, damaged)
    assert not _two_rank_writer(root, 0, world_size=1).finalize()['complete']  # stops
    progress = read_store_progress(root, {}, dict(size=2, classes=['a', 'b']))
    assert not progress['complete'] and list(progress['damaged']) == [damaged]
    assert progress['unchecked'] == ['classes']
    index = _repair(root, 1)
    assert index['complete'] and 'classes' not in index['meta']
    assert len(LatentStore(root)) == 8


def test_a_writer_from_python_records_the_same(tmp_path):
    """LatentStoreWriter given more settings than an older store records."""
    root = str(tmp_path / 'store')
    x = np.zeros((2, 1, 2, 4, 2, 2), np.float32)
    writer = LatentStoreWriter(root, 4, (4, 2, 2), shard_size=2, meta=dict(size=2))
    writer.write_shard(0, x, [0, 1])
    writer = LatentStoreWriter(root, 4, (4, 2, 2), shard_size=2,
                               meta=dict(size=2, video_reader=3))
    writer.write_shard(1, x, [0, 1])
    index = writer.finalize()
    assert index['meta'] == dict(size=2)
    assert [s.get('meta') for s in index['shards']] == [None, dict(video_reader=3)]
    with pytest.raises(ValueError, match=r'written with video_reader=3 .*this run has '
                                         r'video_reader=4'):
        LatentStoreWriter(root, 4, (4, 2, 2), shard_size=2, meta=dict(size=2, video_reader=4))


def test_a_store_begun_without_a_source_fingerprint_keeps_none(tmp_path):
    """A rerun recorded its source fingerprint in a store begun without one: the index
    said the older shards came from this run's items, which nothing checked, and a run
    with their true items was then refused (as LATER_META_KEYS: kept unknown)."""
    root = str(tmp_path / 'store')
    x = np.zeros((2, 1, 2, 4, 2, 2), np.float32)
    LatentStoreWriter(root, 4, (4, 2, 2), shard_size=2).write_shard(0, x, [0, 1])
    writer = LatentStoreWriter(root, 4, (4, 2, 2), shard_size=2, source_fingerprint='b' * 64)
    writer.write_shard(1, x, [0, 1])
    assert 'source_fingerprint' not in writer.finalize()
    with open(osp.join(root, 'parts', 'rank-00000.json')) as f:
        assert 'source_fingerprint' not in json.load(f)
    assert LatentStoreWriter(root, 4, (4, 2, 2), shard_size=2,
                             source_fingerprint='a' * 64).pending_shards() == []
    # a part that records one is still compared with this run's, recorded or not
    other = str(tmp_path / 'other')
    LatentStoreWriter(other, 4, (4, 2, 2), shard_size=2, world_size=2,
                      source_fingerprint='a' * 64).write_shard(0, x, [0, 1])
    LatentStoreWriter(other, 4, (4, 2, 2), shard_size=2, rank=1, world_size=2)\
        .write_shard(1, x, [0, 1])
    with pytest.raises(SourceChangedError, match='rank-00000.json'):
        LatentStoreWriter(other, 4, (4, 2, 2), shard_size=2, rank=1, world_size=2,
                          source_fingerprint='b' * 64).pending_shards()

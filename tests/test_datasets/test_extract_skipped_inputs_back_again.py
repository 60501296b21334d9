"""A clip skipped because its video was not found (a disk not mounted) or could not be
read (a broken copy) stayed skipped for good: once the file was back, a rerun on the
complete store said 'nothing to do' and listed it with its old reason only. It now says
which skipped videos can be added now and how (another --out, trained on with this)."""
import os
import shutil

import pytest

from mmsora.datasets import PackedLatentDataset, write_manifest
from tests.extract_tools import extract, shard_mtimes
from tests.shared_videos import BIKES, needs_videos

pytestmark = [needs_videos, pytest.mark.usefixtures('kept_environ')]


def extract_clips(manifest, out, vae):
    return extract.main(['--manifest', manifest, '--out', out, '--vae', vae,
                         '--num-frames', '2', '--size', '16', '--num-workers', '0',
                         '--device', 'cpu', '--dtype', 'float32', '--shard-size', '2'])


def test_skipped_videos_that_are_back_are_named_with_how_to_add_them(tmp_path, tiny_vae_dir,
                                                                      capsys):
    videos = tmp_path / 'videos'
    videos.mkdir()
    missing, broken = str(videos / 'mounted_later.mp4'), str(videos / 'broken.mp4')
    with open(broken, 'wb') as f:
        f.write(b'\x00\x00\x00\x18ftypmp42 truncated')
    manifest, out = str(tmp_path / 'clips.csv'), str(tmp_path / 'stores' / 'old')
    write_manifest([dict(path=BIKES), dict(path=missing), dict(path=broken)], manifest)
    first = extract_clips(manifest, out, tiny_vae_dir)
    assert first['complete'] and first['num_items'] == 1 and first['num_skipped'] == 2
    said = capsys.readouterr().out
    assert f"{missing} (video file not found: '{missing}')" in said

    # nothing is back yet: the rerun names no video to add
    extract_clips(manifest, out, tiny_vae_dir)
    said = capsys.readouterr().out
    assert 'nothing to do' in said and 'can be added now' not in said

    # the disk is mounted again: the missing video is there now
    shutil.copy(BIKES, missing)
    before = shard_mtimes(out)
    again = extract_clips(manifest, out, tiny_vae_dir)
    said = capsys.readouterr().out.splitlines()
    assert again['shards_written'] == 0 and again['num_items'] == 1
    assert shard_mtimes(out) == before  # (nothing encoded into the complete store)
    assert said[0].startswith(f'extract_features.py: {out} is complete (1 item in 2 shards):'
                              ' nothing to do; skipped 2 unreadable or too short inputs')
    assert said[1] == (
        f'extract_features.py: 1 skipped video can be added now (not found then and there '
        f'now: {missing}): put its row in a manifest of its own, extract that into another '
        "--out and train on both stores: train_dataloader.dataset.store=['old', 'new'] "
        f'(docs/video.md); {out} is complete and takes no more')

    # a fixed copy replaces the broken file (written after the store's shards)
    shutil.copy(BIKES, broken)
    later = max(before.values()) + 10 ** 9
    os.utime(broken, ns=(later, later))
    extract_clips(manifest, out, tiny_vae_dir)
    said = capsys.readouterr().out.splitlines()
    assert said[1].startswith(
        'extract_features.py: 2 skipped videos can be added now (1 not found then and there '
        f'now; 1 unreadable then and changed since; the first: {missing}): put their rows '
        'in a manifest of their own, extract that into another --out')

    # following the advice: their rows into another --out, trained on with the old one
    rows = str(tmp_path / 'back.csv')
    write_manifest([dict(path=missing), dict(path=broken)], rows)
    new = extract_clips(rows, str(tmp_path / 'stores' / 'new'), tiny_vae_dir)
    assert new['num_items'] == 2 and new['num_skipped'] == 0
    assert len(PackedLatentDataset(str(tmp_path / 'stores'), store=['old', 'new'])) == 3


def test_only_manifest_stores_and_recorded_reasons_are_looked_at(tmp_path):
    """An image folder's store and an older store's records (no reasons) name nothing;
    a skip for another reason (too short) is not a file that came back."""
    there = tmp_path / 'there.mp4'
    there.write_bytes(b'x')
    args = extract.parse_args(['--manifest', 'm.csv', '--out', str(tmp_path), '--vae', 'v',
                               '--num-frames', '2', '--size', '16'])
    shards = [dict(file='shard_00000.npy', skipped=[f'{there} (clip 1 of 2)',
                                                    f'{there} (clip 2 of 2)'])]
    assert extract.back_again(args, shards) == ''
    shards[0]['skipped_why'] = ['too short', 'too short']
    assert extract.back_again(args, shards) == ''
    shards[0]['skipped_why'] = [f"video file not found: '{there}'"] * 2
    assert extract.back_again(args, shards).startswith(
        f'1 skipped video can be added now (not found then and there now: {there}): ')
    args.manifest, args.data_path = None, str(tmp_path)
    assert extract.back_again(args, shards) == ''

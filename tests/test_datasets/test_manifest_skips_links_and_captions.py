"""Fixes found by a hands-on walk-through: VideoDataset(skip_corrupt=True) on a video
too short for the clip; tools/make_manifest.py on pictures renamed to .mp4, null and
non-string captions, folder links (loops, linked class folders, datasets linked in
from outside), file-name caption keys shared by several videos, the full list of
skipped files, and a file given for the folder. Clips are tiny mp4s written here."""
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from mmsora.datasets import video_dataset
from mmsora.datasets.manifest import load_manifest, write_manifest
from mmsora.datasets.transforms import ClipTooShortError
from mmsora.datasets.video_dataset import VideoDataset
from mmsora.utils.cli import UserError
from tests.extract_tools import make_manifest_tool, run_make_manifest
from tests.tiny_data import make_clip


# --------------------------------------------------------------------------- #
#                 VideoDataset(skip_corrupt=True): too-short clips             #
# --------------------------------------------------------------------------- #
PIPELINE = [dict(type='SampleClipIndices', num_frames=8, frame_stride=1),
            dict(type='DecodeFrames'), dict(type='PackVideoInputs')]


def test_skip_corrupt_skips_a_video_too_short_for_the_clip(tmp_path, monkeypatch):
    short = make_clip(tmp_path / 'short5.mp4', num_frames=5)
    long = make_clip(tmp_path / 'long.mp4', num_frames=10, value=200)
    manifest = str(tmp_path / 'train.csv')
    write_manifest([dict(path=short, caption='short'), dict(path=long, caption='long')],
                   manifest)
    # Without skip_corrupt the error stays as it was.
    with pytest.raises(ClipTooShortError, match=r"short5\.mp4' has 5 frames but a clip "
                       r"of 8 frames at stride 1 needs 8; .*pad='loop'"):
        VideoDataset(manifest, pipeline=PIPELINE, seed=0)[0]
    logged = []
    monkeypatch.setattr(video_dataset, 'print_log', lambda msg, **kw: logged.append(msg))
    ds = VideoDataset(manifest, pipeline=PIPELINE, seed=0, skip_corrupt=True)
    item = ds[0]  # before: the ClipTooShortError above stopped training
    assert item['caption'] == 'long' and item['images'].shape == (3, 8, 16, 16)
    assert ds.num_skipped == 1 and ds[0]['caption'] == 'long' and ds.num_skipped == 1
    assert len(logged) == 1, logged
    assert logged[0].startswith('skipping video item 0: ') and 'short5.mp4' in logged[0]
    assert logged[0].endswith('(1 skipped in this process)'), logged[0]


# --------------------------------------------------------------------------- #
#                            tools/make_manifest.py                           #
# --------------------------------------------------------------------------- #
def test_a_picture_renamed_to_mp4_is_skipped(tmp_path, clips, capsys):
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(clips / 'films' / 'pic.mp4',
                                                          format='PNG')
    summary, printed = run_make_manifest(capsys, clips, '--out', tmp_path / 'm.csv')
    assert summary['num_rows'] == 3  # before: 4, the picture as a 1-frame video
    assert 'skipped 1 unreadable' in printed
    assert "pic.mp4': a picture (png_pipe), not a video" in printed, printed


def test_null_caption_is_no_caption_and_a_number_is_refused(tmp_path, clips, capsys):
    captions = tmp_path / 'caps.json'
    captions.write_text(json.dumps({'bikes/a.mp4': 'bikes', 'bikes/b.mp4': None,
                                    'c.mp4': 'a film'}))
    out = tmp_path / 'm.jsonl'
    _, printed = run_make_manifest(capsys, clips, '--out', out, '--captions', captions)
    rows = load_manifest(str(out))
    assert [r.get('caption') for r in rows] == ['bikes', None, 'a film']  # not 'None'
    assert '; 1 without a caption' in printed, printed
    for value, kind in ((42, 'number'), (['a', 'b'], 'array'), (True, 'boolean')):
        captions.write_text(json.dumps({'bikes/a.mp4': 'bikes', 'bikes/b.mp4': value}))
        with pytest.raises(UserError, match=rf"captions file .*caps\.json: the caption of "
                           rf"'bikes/b\.mp4' is a JSON {kind}, not a string") as info:
            run_make_manifest(capsys, clips, '--out', out, '--captions', captions)
        assert '\n' not in str(info.value)


def test_a_folder_link_loop_is_listed_once(tmp_path, clips, capsys):
    os.symlink('..', clips / 'bikes' / 'loop')  # before: clips/bikes/loop/bikes/loop/...
    summary, printed = run_make_manifest(capsys, clips, '--out', tmp_path / 'm.csv')
    assert summary['num_rows'] == 3 and summary['skipped_links'] == 1
    assert '; skipped 1 folder link that leads to a folder already listed' in printed


def test_a_linked_class_folder_once_and_a_dataset_linked_in(tmp_path, clips, clip_bytes,
                                                           capsys):
    os.symlink('bikes', clips / 'autos')  # a class folder linked twice
    external = tmp_path / 'disk2' / 'trains'  # a dataset kept elsewhere, linked in
    external.mkdir(parents=True)
    (external / 'd.mp4').write_bytes(clip_bytes)
    os.symlink(external, clips / 'trains')
    out = tmp_path / 'm.csv'
    summary, _ = run_make_manifest(capsys, clips, '--out', out, '--label-from-folder')
    assert [osp.relpath(r['path'], clips) for r in load_manifest(str(out))] == [
        'bikes/a.mp4', 'bikes/b.mp4', 'films/c.mp4', 'trains/d.mp4']
    assert summary['classes'] == ['bikes', 'films', 'trains']  # before: 'autos' too
    assert summary['skipped_links'] == 1


def test_walk_folders_stops_at_every_kind_of_loop(tmp_path, clips):
    external = tmp_path / 'disk2' / 'trains'
    (external / 'sub').mkdir(parents=True)
    os.symlink(external, clips / 'trains')
    os.symlink('../..', clips / 'films' / 'up')  # above VIDEO_DIR: a loop, not more data
    os.symlink('../../clips', external / 'back')  # from outside back into the tree
    os.symlink('..', external / 'sub' / 'parent')  # a loop outside the tree
    os.symlink('../bikes', clips / 'films' / 'again')  # a folder listed already
    folders, skipped_links = make_manifest_tool().walk_folders(str(clips))
    assert sorted(osp.relpath(f, clips) for f, _ in folders) == [
        '.', 'bikes', 'films', 'trains', 'trains/sub']
    assert skipped_links == 4
    files = {osp.relpath(f, clips): names for f, names in folders}
    assert files['bikes'] == ['a.mp4', 'b.mp4'] and files['trains'] == []


def test_a_file_name_key_shared_by_several_videos_is_refused(tmp_path, clips, capsys):
    (clips / 'bikes' / '0001.mp4').write_bytes((clips / 'bikes' / 'a.mp4').read_bytes())
    (clips / 'films' / '0001.mp4').write_bytes((clips / 'bikes' / 'a.mp4').read_bytes())
    captions, out = tmp_path / 'caps.json', tmp_path / 'm.csv'
    captions.write_text(json.dumps({'0001.mp4': 'which one?', 'c.mp4': 'a film'}))
    with pytest.raises(UserError, match=r"--captions: 1 key is a file name that several "
                       r"videos share, e.g. '0001\.mp4' matches 2 videos \(bikes/0001\.mp4,"
                       r" films/0001\.mp4\); key it by the path relative to .*clips$"):
        run_make_manifest(capsys, clips, '--out', out, '--captions', captions)
    assert not out.exists()  # refused before probing
    # A path key settles its video; the file-name key then names one video only.
    captions.write_text(json.dumps({'0001.mp4': 'a film', 'bikes/0001.mp4': 'bikes'}))
    run_make_manifest(capsys, clips, '--out', out, '--captions', captions)
    got = {osp.relpath(r['path'], clips): r.get('caption') for r in load_manifest(str(out))}
    assert got['bikes/0001.mp4'] == 'bikes' and got['films/0001.mp4'] == 'a film'
    assert got['films/c.mp4'] is None


def test_the_full_list_of_skipped_files_is_written(tmp_path, clips, capsys):
    broken = [clips / 'films' / f'broken{i:02d}.mp4' for i in range(12)]
    for path in broken:
        path.write_text('not a video')
    out = tmp_path / 'ann' / 'm.csv'
    summary, printed = run_make_manifest(capsys, clips, '--out', out)
    listed = tmp_path / 'ann' / 'm.csv.skipped.txt'
    assert summary['skipped_file'] == str(listed)
    assert f'skipped 12 unreadable (all listed in {listed})' in printed, printed
    assert f'... and 2 more (in {listed})' in printed
    lines = listed.read_text().splitlines()
    assert len(lines) == 12
    for line, path in zip(lines, broken):
        assert str(path) in line and 'not a readable video container' in line, line
    for path in broken:
        path.unlink()
    summary, printed = run_make_manifest(capsys, clips, '--out', out)
    assert summary['skipped_file'] is None and 'listed in' not in printed
    assert not listed.exists()  # an old list would describe another run


def test_a_file_given_for_the_folder(tmp_path, clips):
    with pytest.raises(UserError, match=r'^.*a\.mp4 is a file, not a folder: give the '
                       r'folder that holds the videos$'):
        make_manifest_tool().main([str(clips / 'bikes' / 'a.mp4'), '--out',
                                   str(tmp_path / 'm.csv')])

"""tools/make_manifest.py --caption-files reads each video's caption from NAME.txt
beside it (the layout of kohya / diffusion-pipe / musubi-tuner datasets), and
--skip-uncaptioned leaves the videos without one out of the manifest, unprobed, listed
in OUT.skipped.txt. Before, captions came from one JSON file only, and a row without a
caption could only be dropped by hand before text-to-video extraction."""
import json

import pytest

from mmsora.datasets import probe_cache
from mmsora.datasets.extraction_sources import ClipSource
from mmsora.datasets.manifest import load_manifest
from mmsora.utils.cli import UserError
from tests.extract_tools import run_make_manifest


def captions_of(out):
    return {r['path'].rsplit('/', 1)[-1]: r.get('caption') for r in load_manifest(str(out))}


def test_caption_files_beside_the_videos(tmp_path, clips, capsys):
    (clips / 'bikes/a.txt').write_text('\ufeffa red bike\non a hill\n', encoding='utf-8')
    (clips / 'bikes/b.txt').write_text('  \n')  # blank: no caption
    out = tmp_path / 'm.jsonl'
    summary, printed = run_make_manifest(capsys, clips, '--out', out, '--caption-files')
    assert captions_of(out) == {'a.mp4': 'a red bike on a hill', 'b.mp4': None,
                                'c.mp4': None}
    assert ('; 2 without a caption (bikes/b.mp4, films/c.mp4; --skip-uncaptioned leaves '
            'them out)') in printed and summary['num_rows'] == 3
    # No .txt holds text: the summary says where they were looked for.
    (clips / 'bikes/a.txt').unlink()
    _, printed = run_make_manifest(capsys, clips, '--out', out, '--caption-files')
    assert '3 without a caption (no video has a NAME.txt beside it' in printed


def test_skip_uncaptioned_leaves_them_out_unprobed(tmp_path, clips, capsys, monkeypatch):
    (clips / 'films/c.txt').write_text('a film')
    probed = []
    probe = probe_cache.probe_video
    monkeypatch.setattr(probe_cache, 'probe_video',
                        lambda path: probed.append(path) or probe(path))
    out = tmp_path / 'm.csv'
    summary, printed = run_make_manifest(capsys, clips, '--out', out, '--caption-files',
                                '--skip-uncaptioned', '--label-from-folder')
    assert [p.rsplit('/', 1)[-1] for p in probed] == ['c.mp4']
    rows = load_manifest(str(out))
    # The labels are the same as without the option: class 'bikes' still counts.
    assert [(r['caption'], r['label'], r['class_name']) for r in rows] == [
        ('a film', 1, 'films')]
    assert summary['left_out'] == 2 and summary['skipped'] == []
    skipped_file = tmp_path / 'm.csv.skipped.txt'
    assert ('skipped 0 unreadable; 2 classes; left out 2 without a caption '
            f'(--skip-uncaptioned; listed in {skipped_file})') in printed
    lines = skipped_file.read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(
        'bikes/a.mp4: no caption (left out by --skip-uncaptioned)')
    # The manifest is what text-to-video extraction takes (every row captioned).
    ClipSource(str(out), 2, (16, 16), require_caption=True)


def test_skip_uncaptioned_with_a_captions_json(tmp_path, clips, capsys):
    captions = tmp_path / 'caps.json'
    captions.write_text(json.dumps({'a.mp4': 'a bike', 'b.mp4': None, 'zzz.mp4': 'x'}))
    out = tmp_path / 'm.csv'
    summary, printed = run_make_manifest(capsys, clips, '--out', out, '--captions', captions,
                                '--skip-uncaptioned')
    assert captions_of(out) == {'a.mp4': 'a bike'} and summary['left_out'] == 2
    assert '1 caption matching no video: zzz.mp4' in printed


@pytest.mark.parametrize('argv, message', [
    (['--captions', 'c.json', '--caption-files'],
     '--captions and --caption-files both give the captions: choose one'),
    (['--skip-uncaptioned'],
     '--skip-uncaptioned needs the captions: give --captions FILE or --caption-files'),
    (['--caption-files', '--skip-uncaptioned'],
     r'--skip-uncaptioned: none of the 3 videos under .* has a caption \(no video has '
     r'a NAME.txt'),
])
def test_caption_option_mistakes(tmp_path, clips, capsys, argv, message):
    with pytest.raises(UserError, match=message):
        run_make_manifest(capsys, clips, '--out', tmp_path / 'm.csv', *argv)
    assert not (tmp_path / 'm.csv').exists()


def test_a_caption_file_not_utf8_is_named(tmp_path, clips, capsys):
    (clips / 'bikes/b.txt').write_bytes('café'.encode('latin-1'))
    with pytest.raises(UserError, match=r'--caption-files: .*bikes/b.txt is not UTF-8 '
                                        r'text \(.* at byte 3\): save it as UTF-8'):
        run_make_manifest(capsys, clips, '--out', tmp_path / 'm.csv', '--caption-files')


def test_videos_left_out_keep_their_cached_probes(tmp_path, clips, capsys, monkeypatch):
    """A run with --skip-uncaptioned rewrote the probe cache with the captioned videos
    alone: captioning one more later probed it again (at 100k clips, every one)."""
    probed = []
    probe = probe_cache.probe_video
    monkeypatch.setattr(probe_cache, 'probe_video',
                        lambda path: probed.append(path) or probe(path))
    out = tmp_path / 'm.csv'
    (clips / 'films/c.txt').write_text('a film')
    run_make_manifest(capsys, clips, '--out', out, '--caption-files')  # all three probed
    run_make_manifest(capsys, clips, '--out', out, '--caption-files', '--skip-uncaptioned')
    (clips / 'bikes/a.txt').write_text('a bike')
    probed.clear()
    summary, _ = run_make_manifest(capsys, clips, '--out', out, '--caption-files',
                          '--skip-uncaptioned')
    assert probed == [] and summary['num_rows'] == 2

"""tools/make_manifest.py keeps its probes in OUT.probes.jsonl as they finish: a run
stopped half way, or rerun after clips were added or changed, probes only the videos
not probed before. Clips are tiny mp4s written here."""
import json
import os

import pytest

from mmsora.datasets import probe_cache
from mmsora.utils.video_io import VideoReadError, probe_video
from tests.extract_tools import make_manifest_tool
from tests.tiny_data import make_clip


@pytest.fixture
def clips(tmp_path):
    root = tmp_path / 'clips'
    for i, name in enumerate(('a.mp4', 'b.mp4', 'sub/c.mp4', 'sub/d.mp4')):
        make_clip(root / name, num_frames=2 + i)
    return root


def run(tmp_path, clips, out='train.csv', fail_at=None, extra=(), refused=()):
    """make_manifest.main on ``clips`` with one probing thread: (the files it
    probed, in order, and its summary); ``fail_at=k`` stops it with Ctrl-C at the k-th
    probe; the files named in ``refused`` cannot be read (no permission)."""
    tool = make_manifest_tool()
    probed = []

    def counting(path):
        if fail_at is not None and len(probed) == fail_at:
            raise KeyboardInterrupt
        probed.append(path)
        if path.endswith(tuple(refused)):
            try:  # as PyAV refuses a file it may not read
                raise PermissionError(13, 'Permission denied')
            except OSError:
                raise VideoReadError(path, 'not a readable video container '
                                           '(Permission denied)')
        return probe_video(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_cache, 'probe_video', counting)
        summary = tool.main([str(clips), '--out', str(tmp_path / out), '--workers', '1',
                             *extra])
    return [p.replace(str(clips) + '/', '') for p in probed], summary


def test_rerun_probes_only_videos_new_or_changed(tmp_path, clips):
    probed, _ = run(tmp_path, clips)
    assert sorted(probed) == ['a.mp4', 'b.mp4', 'sub/c.mp4', 'sub/d.mp4']
    manifest = (tmp_path / 'train.csv').read_text()
    # Nothing changed: nothing probed, the same manifest.
    assert run(tmp_path, clips)[0] == []
    assert (tmp_path / 'train.csv').read_text() == manifest
    # A clip added and one rewritten (another size) are probed; a broken one named.
    make_clip(clips / 'e.mp4', num_frames=3)
    make_clip(clips / 'b.mp4', num_frames=7)
    (clips / 'sub/c.mp4').write_bytes(b'not a video at all')
    probed, summary = run(tmp_path, clips)
    assert sorted(probed) == ['b.mp4', 'e.mp4', 'sub/c.mp4']
    assert len(summary['skipped']) == 1 and 'c.mp4' in summary['skipped'][0]
    frames = {row.split(',')[0]: row for row in
              (tmp_path / 'train.csv').read_text().splitlines()[1:]}
    assert ',7,' in frames['clips/b.mp4'] and 'clips/e.mp4' in frames
    # The broken file's reason comes from the cache, the same words.
    probed, again = run(tmp_path, clips)
    assert probed == [] and again['skipped'] == summary['skipped']
    # --reprobe probes all.
    assert len(run(tmp_path, clips, extra=['--reprobe'])[0]) == 5


def test_a_run_stopped_half_way_keeps_its_probes(tmp_path, clips):
    with pytest.raises(KeyboardInterrupt, match=r'^\(2 of 4 videos probed, kept in '
                                                r'.*train.csv.probes.jsonl: rerun the same '
                                                r'command to probe the rest\)$'):
        run(tmp_path, clips, fail_at=2)
    lines = (tmp_path / 'train.csv.probes.jsonl').read_text().splitlines()
    assert json.loads(lines[0]) == {'probe_cache': 2} and len(lines) == 3
    assert not (tmp_path / 'train.csv').exists()
    probed, _ = run(tmp_path, clips)
    assert len(probed) == 2  # the two not probed before
    run(tmp_path, clips, out='fresh.csv')
    assert (tmp_path / 'train.csv').read_text() == (tmp_path / 'fresh.csv').read_text()


def test_a_torn_or_foreign_cache_is_probed_again(tmp_path, clips):
    run(tmp_path, clips)
    cache = tmp_path / 'train.csv.probes.jsonl'
    lines = cache.read_text().splitlines()
    # The last line cut short (a run killed while writing it): that video only.
    cache.write_text('\n'.join(lines[:-1] + [lines[-1][:20]]) + '\n')
    assert len(run(tmp_path, clips)[0]) == 1
    # A cache of another version (what the probe checks changed): all.
    cache.write_text('\n'.join(['{"probe_cache": 0}'] + lines[1:]) + '\n')
    assert len(run(tmp_path, clips)[0]) == 4
    cache.write_text('garbage\n')
    assert len(run(tmp_path, clips)[0]) == 4


def test_a_file_refused_or_touched_is_probed_again(tmp_path, clips):
    """A read refused (permissions, an I/O error) is not the file's content: fixed with
    chmod, which changes neither size nor time, it is probed again; a file whose time
    alone changed is probed again too."""
    _, summary = run(tmp_path, clips, refused=['b.mp4'])
    assert 'Permission denied' in summary['skipped'][0]
    probed, summary = run(tmp_path, clips)
    assert probed == ['b.mp4'] and summary['skipped'] == []
    os.utime(clips / 'a.mp4', ns=(1, 10**18))
    assert run(tmp_path, clips)[0] == ['a.mp4']


def test_a_cache_that_cannot_be_written_is_done_without(tmp_path, clips, capsys):
    (tmp_path / 'train.csv.probes.jsonl').mkdir()
    probed, summary = run(tmp_path, clips)
    assert len(probed) == 4 and summary['num_rows'] == 4
    assert 'warning: cannot keep the probes in' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['clips', 'train.csv',
                                                          'train.csv.probes.jsonl']

"""tools/make_manifest.py and an Open-Sora CSV of captions (path,text): the docs' first
command with --out at that CSV wrote over it with a manifest without captions, and the
CSV given to --captions was refused as 'not valid JSON' alone."""
import csv

import pytest

from mmsora.datasets.manifest import load_manifest
from mmsora.utils.cli import UserError
from tests.extract_tools import run_make_manifest
from tests.tiny_data import make_clip


@pytest.fixture
def open_sora_folder(tmp_path):
    """clips/{a,b}.mp4 and clips/train.csv as Open-Sora writes it (absolute paths)."""
    root = tmp_path / 'clips'
    data = open(make_clip(tmp_path / 'one' / 'c.mp4'), 'rb').read()
    root.mkdir()
    rows = []
    for name, text in (('a.mp4', 'a bike rides on the road, in the sun'),
                       ('b.mp4', 'a cat runs in the snow')):
        (root / name).write_bytes(data)
        rows.append(dict(path=str(root / name), text=text, num_frames=8, height=16,
                         width=16, aspect_ratio=1.0, fps=25.0, resolution=256))
    with open(root / 'train.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_captions_at_out_are_not_written_over(open_sora_folder, capsys):
    out = open_sora_folder / 'train.csv'
    before = out.read_text()
    with pytest.raises(UserError) as info:
        run_make_manifest(capsys, open_sora_folder, '--out', out)
    assert str(info.value) == (
        f'--out {out} holds 2 captions, which this run (without --captions or '
        f'--caption-files) would write over with none: give {out} to '
        'extract_features.py --manifest as it is (an Open-Sora CSV is a manifest), or '
        'write this one to another --out')
    assert out.read_text() == before
    assert [r['caption'] for r in load_manifest(str(out))][1] == 'a cat runs in the snow'
    # another --out is written; a manifest without captions at --out is rewritten as before
    other = open_sora_folder / 'probed.csv'
    for _ in range(2):
        summary, _ = run_make_manifest(capsys, open_sora_folder, '--out', other)
        assert summary['num_rows'] == 2


def test_a_csv_given_as_captions_is_pointed_at_the_manifest_option(open_sora_folder,
                                                                   capsys):
    csv_file = open_sora_folder / 'train.csv'
    with pytest.raises(UserError) as info:
        run_make_manifest(capsys, open_sora_folder, '--out', open_sora_folder / 'm.csv',
                          '--captions', csv_file)
    assert str(info.value) == (
        f"--captions {csv_file} is a manifest, not a JSON object of captions: a CSV or "
        "JSONL of path and caption (Open-Sora's path,text) is a manifest as it is: give "
        f'it to extract_features.py --manifest {csv_file}')


def test_captions_of_a_manifest_the_reader_refuses_are_kept_too(open_sora_folder, capsys):
    """A row the manifest reader refuses (a label that is no number) made the whole
    file 'not a manifest', written over, captions and all."""
    out = open_sora_folder / 'labelled.csv'
    out.write_text('path,text,label\na.mp4,a bike rides,3\nb.mp4,a cat runs,cat\n')
    before = out.read_text()
    with pytest.raises(UserError, match=f'^--out {out} holds 2 captions'):
        run_make_manifest(capsys, open_sora_folder, '--out', out)
    assert out.read_text() == before

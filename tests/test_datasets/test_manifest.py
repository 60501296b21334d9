"""Manifests (CSV/JSONL): round trips, path resolution, one-line errors naming file,
line and column; tools/make_manifest.py on a folder with real clips and a broken one."""
import json
import os
import subprocess
import sys

import pytest

from mmsora.datasets.manifest import ManifestError, load_manifest, write_manifest
from mmsora.utils.cli import UserError
from tests.extract_tools import make_manifest_tool
from tests.shared_videos import BIKES, BUNNY, REPO_ROOT, needs_videos


ROWS = [
    dict(path='clips/a.mp4', caption='a cat, sitting "still"', label=0, num_frames=250,
         fps=25.0, height=272, width=640, source='web'),
    dict(path='clips/b.mp4', caption='dog', label=3, num_frames=12, fps=12.5,
         height=64, width=64),
]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('ext', ['csv', 'jsonl'])
def test_round_trip(tmp_path, ext):
    path = str(tmp_path / f'm.{ext}')
    write_manifest(ROWS, path)
    rows = load_manifest(path)
    for got, want in zip(rows, ROWS):
        assert got == dict(want, path=str(tmp_path / want['path']))
    assert type(rows[0]['label']) is int and type(rows[1]['fps']) is float
    assert type(rows[0]['num_frames']) is int


def test_csv_layout(tmp_path):
    path = tmp_path / 'm.csv'
    write_manifest(ROWS, str(path))
    lines = path.read_text().splitlines()
    assert lines[0] == 'path,caption,label,num_frames,fps,height,width,source'
    assert lines[2] == 'clips/b.mp4,dog,3,12,12.5,64,64,'


def test_open_sora_text_column_is_the_caption(tmp_path):
    path = write(tmp_path / 'm.csv', 'path,text,num_frames\nx.mp4,a red car,10\n')
    assert load_manifest(path, require=('path', 'caption')) == [
        dict(path=str(tmp_path / 'x.mp4'), caption='a red car', num_frames=10)]


def test_an_open_sora_csv_is_a_manifest(tmp_path):
    """Open-Sora's CSV as it writes it (docs/video.md): relative and absolute paths,
    ``text`` for the caption, its extra columns kept as text, an empty fps left out."""
    path = write(tmp_path / 'meta' / 'train.csv',
                 'path,text,num_frames,height,width,aspect_ratio,fps,resolution,aes\n'
                 'clips/a.mp4,"a car, red",250,272,640,0.425,25.0,174080,5.21\n'
                 f'{tmp_path}/img.jpg,a still,1,480,640,0.75,,307200,4.8\n')
    a, img = load_manifest(path, require=('path', 'caption'))
    assert a == dict(path=str(tmp_path / 'meta' / 'clips' / 'a.mp4'), caption='a car, red',
                     num_frames=250, height=272, width=640, aspect_ratio='0.425',
                     fps=25.0, resolution='174080', aes='5.21')
    assert img['path'] == str(tmp_path / 'img.jpg') and 'fps' not in img
    assert load_manifest(path, data_root='/data')[0]['path'] == '/data/clips/a.mp4'


def test_relative_paths(tmp_path):
    path = write(tmp_path / 'ann' / 'm.jsonl',
                 json.dumps(dict(path='v/a.mp4')) + '\n\n'
                 + json.dumps(dict(path='/abs/b.mp4')) + '\n'
                 + json.dumps(dict(path='../c.mp4')) + '\n')
    rows = load_manifest(path)
    assert [r['path'] for r in rows] == [
        str(tmp_path / 'ann' / 'v' / 'a.mp4'), '/abs/b.mp4', str(tmp_path / 'c.mp4')]
    rows = load_manifest(path, data_root='/data/root')
    assert [r['path'] for r in rows] == ['/data/root/v/a.mp4', '/abs/b.mp4', '/data/c.mp4']


def test_write_relative_to(tmp_path):
    path = str(tmp_path / 'out' / 'm.csv')
    write_manifest([dict(path=str(tmp_path / 'v' / 'a.mp4'))], path,
                   relative_to=str(tmp_path / 'out'))
    assert open(path).read().splitlines()[1] == '../v/a.mp4'
    assert load_manifest(path)[0]['path'] == str(tmp_path / 'v' / 'a.mp4')


def test_write_relative_to_keeps_naming_the_files_the_rows_name(tmp_path, monkeypatch):
    """A relative row path names a file from the working folder (as any path given to
    Python does), ``~`` from the home folder; written relative to ``relative_to``, each
    loads back as that file. '~/b.mp4' was written as '../~/b.mp4' (a folder named ~
    in the working folder), which load_manifest never finds."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    path = str(tmp_path / 'out' / 'm.csv')
    write_manifest([dict(path='v/a.mp4'), dict(path='~/b.mp4')], path, relative_to='out')
    assert open(path).read().splitlines()[1:] == ['../v/a.mp4', '../home/b.mp4']
    assert [r['path'] for r in load_manifest(path)] == [
        str(tmp_path / 'v' / 'a.mp4'), str(tmp_path / 'home' / 'b.mp4')]
    path = str(tmp_path / 'home' / 'm.csv')
    write_manifest([dict(path='~/b.mp4')], path, relative_to='~')
    assert open(path).read().splitlines()[1:] == ['b.mp4']


def test_empty_cells_are_left_out(tmp_path):
    path = write(tmp_path / 'm.csv', 'path,caption,label\na.mp4,,\nb.mp4,hi,2\n')
    rows = load_manifest(path)
    assert rows[0] == dict(path=str(tmp_path / 'a.mp4'))
    assert rows[1]['label'] == 2


@pytest.mark.parametrize('name, text, require, pattern', [
    ('m.csv', 'vidoe_path,caption\na.mp4,x\n', ('path', ),
     r"m\.csv line 1 \(header\): missing required column 'path' \(did you mean "
     r"'vidoe_path'\?\)"),
    ('m.csv', 'path,captoin\na.mp4,x\n', ('path', 'caption'),
     r"line 1 \(header\): missing required column 'caption' \(did you mean 'captoin'\?\)"),
    ('m.jsonl', '{"path": "a.mp4"}\n{"video_path": "b.mp4"}\n', ('path', ),
     r"m\.jsonl line 2: missing required column 'path' \(did you mean 'video_path'\?\)"),
    ('m.jsonl', '{"file": "a.mp4"}\n', ('path', ),
     r"m\.jsonl line 1: missing required column 'path'$"),
    # Open-Sora 1.0's CSVs: no header, rows of a video and its caption
    ('m.csv', 'clips/a.mp4,a cat runs\nclips/b.MP4,a dog\n', ('path', ),
     r"m\.csv line 1 \(header\): missing required column 'path': line 1 names a video, "
     r"so it is a row, not a header: add a header line first \('path,text' for rows "),
    ('m.csv', 'path,caption\n', ('path', ), r'm\.csv is empty: it holds no rows'),
    ('m.csv', '', ('path', ), r'm\.csv is empty'),
    ('m.jsonl', '\n\n', ('path', ), r'm\.jsonl is empty'),
    ('m.csv', 'path,num_frames\na.mp4,10\nb.mp4,ten\n', ('path', ),
     r"m\.csv line 3 column 'num_frames': 'ten' is not a number"),
    ('m.csv', 'path,label\na.mp4,1.5\n', ('path', ),
     r"line 2 column 'label': '1\.5' is not an integer"),
    ('m.jsonl', '{"path": "a.mp4", "fps": true}\n', ('path', ),
     r"line 1 column 'fps': True is not a number"),
    ('m.csv', 'path,caption\na.mp4,one\nb.mp4,\n', ('path', 'caption'),
     r"m\.csv line 3: empty 'caption'"),
    ('m.csv', 'path\n\na.mp4\n""\n', ('path', ), r"line 4: empty 'path'"),
    ('m.jsonl', '{"path": "a.mp4"}\n{"path": "b.mp4",}\n', ('path', ),
     r'm\.jsonl line 2: invalid JSON'),
    ('m.jsonl', '["a.mp4"]\n', ('path', ), r'line 1: expected a JSON object, got list'),
    ('m.csv', 'path,caption\na.mp4,hello, world\n', ('path', ),
     r'line 2: 3 fields but the header names 2 columns'),
    ('m.txt', 'a.mp4\n', ('path', ), r"m\.txt: unknown format '\.txt'"),
])
def test_bad_manifests(tmp_path, name, text, require, pattern):
    path = write(tmp_path / name, text)
    with pytest.raises(ManifestError, match=pattern) as info:
        load_manifest(path, require=require)
    assert '\n' not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_and_binary_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match='manifest not found: .*nope.csv'):
        load_manifest(str(tmp_path / 'nope.csv'))
    path = tmp_path / 'bin.csv'
    path.write_bytes(b'path\n\xff\xfe\xfa\n')
    with pytest.raises(ManifestError, match=r'bin\.csv is not UTF-8 text'):
        load_manifest(str(path))


# --------------------------------------------------------------------------- #
#                             tools/make_manifest.py                           #
# --------------------------------------------------------------------------- #
@pytest.fixture
def video_dir(tmp_path):
    """Class folders: cars/ holds bikes.mp4, films/ holds the bunny and a broken file."""
    root = tmp_path / 'videos'
    (root / 'cars').mkdir(parents=True)
    (root / 'films' / 'sub').mkdir(parents=True)
    os.symlink(BIKES, root / 'cars' / 'bikes.mp4')
    os.symlink(BUNNY, root / 'films' / 'sub' / 'bunny.MP4')
    (root / 'films' / 'broken.mp4').write_text('not a video')
    (root / 'films' / 'readme.txt').write_text('ignored: not a video extension')
    return root


@needs_videos
@pytest.mark.parametrize('ext', ['csv', 'jsonl'])
def test_make_manifest(tmp_path, video_dir, capsys, ext):
    captions = tmp_path / 'captions.json'
    captions.write_text(json.dumps({'cars/bikes.mp4': 'people on bikes',
                                    'bunny.MP4': 'a big rabbit',
                                    'cars/bike.mp4': 'a misspelt key'}))
    out = tmp_path / 'ann' / f'train.{ext}'
    summary = make_manifest_tool().main([str(video_dir), '--out', str(out), '--label-from-folder',
                                '--captions', str(captions), '--workers', '2'])
    printed = capsys.readouterr().out
    assert 'wrote 2 videos' in printed and 'skipped 1 unreadable' in printed, printed
    # a caption whose key matches no video was not mentioned
    assert '0 without a caption; 1 caption matching no video: cars/bike.mp4' in printed
    assert 'broken.mp4' in printed and '2 classes' in printed
    assert summary['classes'] == ['cars', 'films'] and len(summary['skipped']) == 1

    rows = load_manifest(str(out), require=('path', 'caption'))
    assert len(rows) == 2
    bikes, bunny = rows
    assert bikes == dict(path=str(video_dir / 'cars' / 'bikes.mp4'),
                         caption='people on bikes', label=0, class_name='cars',
                         num_frames=250, fps=25.0, height=272, width=640)
    assert bunny['path'] == str(video_dir / 'films' / 'sub' / 'bunny.MP4')
    assert (bunny['label'], bunny['num_frames'], bunny['width']) == (1, 132, 1280)
    assert bunny['caption'] == 'a big rabbit'
    if ext == 'csv':  # paths are written relative to the manifest's folder
        assert out.read_text().splitlines()[1].startswith('../videos/cars/bikes.mp4,')


@needs_videos
def test_make_manifest_extensions_and_absolute(tmp_path, video_dir, capsys):
    out = tmp_path / 'm.csv'
    make_manifest_tool().main([str(video_dir), '--out', str(out), '--extensions', 'mp4',
                      '--absolute', '--workers', '1'])
    rows = load_manifest(str(out))
    assert len(rows) == 2 and 'caption' not in rows[0] and 'label' not in rows[0]
    assert out.read_text().splitlines()[1].startswith(str(video_dir))


def test_make_manifest_user_errors(tmp_path):
    tool = make_manifest_tool()
    with pytest.raises(UserError, match='video folder not found: .*nope'):
        tool.main([str(tmp_path / 'nope'), '--out', str(tmp_path / 'm.csv')])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match=r'no videos \(\.mp4, .*\) under .*empty'):
        tool.main([str(tmp_path / 'empty'), '--out', str(tmp_path / 'm.csv')])
    (tmp_path / 'flat').mkdir()
    (tmp_path / 'flat' / 'x.mp4').write_text('broken')
    with pytest.raises(UserError, match='outside any class folder'):
        tool.main([str(tmp_path / 'flat'), '--out', str(tmp_path / 'm.csv'),
                   '--label-from-folder'])
    with pytest.raises(UserError, match='none of the 1 videos .* could be read'):
        tool.main([str(tmp_path / 'flat'), '--out', str(tmp_path / 'm.csv')])
    with pytest.raises(UserError, match='--out must end in .csv or .jsonl'):
        tool.main([str(tmp_path / 'flat'), '--out', str(tmp_path / 'm.txt')])


def test_make_manifest_cli_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, 'tools/make_manifest.py', str(tmp_path / 'nope'), '--out',
         str(tmp_path / 'm.csv')], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f'error: video folder not found: {tmp_path / "nope"}'

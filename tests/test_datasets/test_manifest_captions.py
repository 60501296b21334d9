"""Empty captions: tools/make_manifest.py --captions takes an empty or whitespace-only
caption for none (it counted it as a caption and wrote an empty cell), and the
manifest loader's refusals of a row without a caption, or of a manifest without a
caption column, say what to do."""
import json

import pytest

from mmsora.datasets.extraction_sources import ClipSource
from mmsora.datasets.manifest import ManifestError, load_manifest
from mmsora.utils.error_messages import explain_error
from tests.extract_tools import run_make_manifest
from tests.tiny_data import make_clip

FILL = (': fill in the caption or drop the row (tools/make_manifest.py --skip-uncaptioned '
        'leaves such videos out)')


@pytest.fixture
def clips(tmp_path):
    """clips/bikes/{a,b}.mp4 and clips/films/c.mp4."""
    data = open(make_clip(tmp_path / 'one' / 'c.mp4'), 'rb').read()
    root = tmp_path / 'clips'
    for rel in ('bikes/a.mp4', 'bikes/b.mp4', 'films/c.mp4'):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def refusal(manifest):
    """The one line extract_features.py --text-encoder stops with on ``manifest``."""
    with pytest.raises(ManifestError) as info:
        ClipSource(str(manifest), 2, (16, 16), require_caption=True)
    message = explain_error(info.value)
    assert '\n' not in message
    return message


@pytest.mark.parametrize('out', ['m.csv', 'm.jsonl'])
def test_empty_and_blank_captions_are_no_captions(tmp_path, clips, capsys, out):
    captions = tmp_path / 'caps.json'
    captions.write_text(json.dumps({'bikes/a.mp4': 'bikes', 'bikes/b.mp4': '',
                                    'films/c.mp4': ' \t '}))
    out = tmp_path / out
    _, printed = run_make_manifest(capsys, clips, '--out', out, '--captions', captions)
    assert '; 2 without a caption' in printed, printed  # before: 0
    assert [r.get('caption') for r in load_manifest(str(out))] == ['bikes', None, None]
    if out.suffix == '.csv':  # written as a null caption is: an empty cell
        assert out.read_text().splitlines()[2].split(',')[1] == ''
    else:  # before: "caption": "" and "caption": " \t "
        assert [json.loads(line).get('caption') for line in open(out)] == [
            'bikes', None, None]
    # extract_features.py --text-encoder's refusal of the row says what to do (before:
    # the JSONL's row was a 'missing required column')
    line = 3 if out.suffix == '.csv' else 2  # (a CSV's line 1 is its header)
    assert refusal(out) == (f"manifest {out} line {line}: empty 'caption' (every row "
                            f'needs one){FILL}')


def test_loader_messages_say_what_to_do(tmp_path):
    opensora = tmp_path / 'opensora.csv'
    opensora.write_text('path,text,aes\na.mp4,a dog,5.1\nb.mp4,,4.2\n')
    assert refusal(opensora) == (f"manifest {opensora} line 3: empty 'text' (the caption; "
                                 f'every row needs one){FILL}')
    no_column = tmp_path / 'no_caption.csv'
    no_column.write_text('path,aes\na.mp4,5.1\n')
    assert refusal(no_column) == (
        f"manifest {no_column} line 1 (header): missing required column 'caption': add a "
        "caption column, 'caption' or Open-Sora's 'text' (read as the caption too); "
        'tools/make_manifest.py --captions writes one')
    first_row = tmp_path / 'first.jsonl'
    first_row.write_text('{"path": "a.mp4"}\n{"path": "b.mp4", "caption": "a dog"}\n')
    assert refusal(first_row) == (
        f"manifest {first_row} line 1: missing required column 'caption': give the row a "
        "'caption' (or Open-Sora's 'text', read as the caption too) or drop the row")
    typo = tmp_path / 'typo.jsonl'
    typo.write_text('{"path": "a.mp4", "caption": "a"}\n{"path": "b.mp4", "captoin": "b"}\n')
    assert refusal(typo).startswith(f"manifest {typo} line 2: missing required column "
                                    "'caption' (did you mean 'captoin'?)")


def test_a_folder_or_a_store_given_as_the_manifest_is_named(tmp_path):
    """A video folder given as --manifest, and a config's VideoDataset pointed at a
    latent store, were 'manifest not found' (walk-through o)."""
    with pytest.raises(FileNotFoundError, match=r'is a folder: give the .csv or .jsonl in it'):
        load_manifest(str(tmp_path))
    (tmp_path / 'index.json').write_text('{}')
    with pytest.raises(FileNotFoundError, match=r'is a latent store \(index.json\): train on '
                                                r'it with PackedLatentDataset'):
        load_manifest(str(tmp_path / 'captions.csv'))

"""extract_features.py's summary of skipped clips, an --out that is a file, and a store
folder an extraction left empty (walk-through ak)."""
import numpy as np
import pytest

from mmsora.datasets import LatentStore, PackedLatentDataset
from mmsora.utils.cli import UserError
from tests.extract_tools import extract, run_extract

pytestmark = pytest.mark.usefixtures('kept_environ')


def past_end(video, frames):
    """The reasons of clips of ``video`` past its readable end (109 frames decode)."""
    return [f"cannot read video '{video}': frame {frame} was asked for but only 109 "
            'frames could be decoded' for frame in frames]


def test_clips_past_a_readable_end_are_one_entry_and_each_video_is_named():
    """Each clip past a cut-short video's end was its own entry (its reason names the
    frame it asked for): with --clips-per-video 30 that video took all 10 places, and
    a video skipped whole after it was never named."""
    cut, short = '/v/cut_faststart.mp4', '/v/short6.mp4'
    names = [f'{cut} (clip {k} of 30)' for k in range(13, 31)]
    why = past_end(cut, range(95, 95 + 8 * 18, 8))
    names += [f'{short} (clip {k} of 30)' for k in range(1, 31)]
    why += [f"video '{short}' has 6 frames but a clip of 8 frames needs 15"] * 30
    shards = [dict(skipped=names[:20], skipped_why=why[:20]),
              dict(skipped=names[20:], skipped_why=why[20:])]
    assert extract.skipped_inputs(shards) == (
        f'skipped 48 unreadable or too short inputs: {cut}: clips 13-30 of 30 past its '
        f'readable end (only 109 frames could be decoded); {short}: clips 1-30 of 30 '
        f"(video '{short}' has 6 frames but a clip of 8 frames needs 15)")


def test_a_video_skipped_for_two_reasons_is_named_once():
    names = [f'v.mp4 (clip {k} of 9)' for k in (1, 8, 9)] + ['w.mp4']
    why = ['its latents hold NaN or inf'] + past_end('v.mp4', (90, 101)) + past_end(
        'w.mp4', (50,))
    assert extract.skipped_inputs([dict(skipped=names, skipped_why=why)]) == (
        'skipped 4 unreadable or too short inputs: v.mp4: clip 1 of 9 (its latents hold '
        'NaN or inf) and clips 8-9 of 9 past its readable end (only 109 frames could be '
        "decoded); w.mp4 (cannot read video 'w.mp4': frame 50 was asked for but only 109 "
        'frames could be decoded)')


def test_past_ten_skipped_videos_the_rest_are_counted():
    shards = [dict(skipped=[f'{k}.mp4 (clip 1 of 2)' for k in range(12)])]
    assert extract.skipped_inputs(shards) == (
        'skipped 12 unreadable or too short inputs: '
        + '; '.join(f'{k}.mp4: clip 1 of 2' for k in range(10))
        + "; ... and 2 more (the store's index.json names every one)")


def test_out_that_is_a_file_is_refused_in_one_line(image_folder, tiny_vae_dir, tmp_path):
    """It stopped with "[Errno 17] File exists: '.../notes.txt'" once the VAE had
    loaded."""
    notes = tmp_path / 'notes.txt'
    notes.write_text('not a store')
    with pytest.raises(UserError) as info:
        run_extract(image_folder, str(notes), tiny_vae_dir)
    assert str(info.value) == f'--out must be a folder (the store): {notes} is a file'
    with pytest.raises(UserError) as info:
        run_extract(image_folder, str(notes / 'store'), tiny_vae_dir)
    assert str(info.value) == f'--out {notes / "store"}: {notes} is a file, not a folder'
    assert notes.read_text() == 'not a store'


def test_a_store_folder_left_empty_says_to_rerun_the_extraction(tmp_path):
    """A Ctrl-C before the first shard was written leaves the --out folder empty (or
    holding a shard's temporary file); training on it said only 'no latent store
    index', with no hint."""
    store = tmp_path / 'store'
    store.mkdir()
    hint = (f"no latent store index {str(store / 'index.json')!r} (the folder is empty: "
            'extraction stopped before its first shard? rerun the extraction to write '
            'the store)')
    with pytest.raises(FileNotFoundError) as info:
        LatentStore(str(store))
    assert str(info.value) == hint
    (store / '.shard_00000.tmp-123.npy').write_bytes(b'\x93NUMPY')  # a write cut off
    with pytest.raises(FileNotFoundError) as info:
        PackedLatentDataset(str(store))
    assert str(info.value) == hint
    np.save(store / 'shard_00000.npy', np.zeros(3))  # no longer empty: another hint
    with pytest.raises(FileNotFoundError, match=r"holds a latent store's shards "
                                                r'\(shard_00000.npy\) without its index'):
        LatentStore(str(store))

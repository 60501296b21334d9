"""tools/make_reference.py: pictures and real clips into the reference .npz the FID / FVD
metrics read."""
import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import load_tool
from tests.shared_videos import BIKES, BUNNY, needs_videos


def tool():
    return load_tool('make_reference')


def test_pictures_are_center_cropped_and_bad_files_skipped(tmp_path, capsys):
    (tmp_path / 'imgs' / 'a').mkdir(parents=True)
    # 40x20 picture: left half red, right half blue; the center crop keeps both halves.
    pic = np.zeros((20, 40, 3), np.uint8)
    pic[:, :20, 0] = 255
    pic[:, 20:, 2] = 255
    Image.fromarray(pic).save(tmp_path / 'imgs' / 'a' / '1.png')
    Image.fromarray(pic[:, ::-1]).save(tmp_path / 'imgs' / '2.png')
    (tmp_path / 'imgs' / '3.jpg').write_bytes(b'not a picture')
    out = tmp_path / 'ref.npz'
    tool().main(['--images', str(tmp_path / 'imgs'), '--out', str(out), '--image-size', '8'])
    printed = capsys.readouterr().out
    assert f'skipped 1 unreadable or too short: {tmp_path / "imgs" / "3.jpg"} (' in printed
    with np.load(out) as data:
        arr = data['arr_0']
    assert arr.shape == (2, 8, 8, 3) and arr.dtype == np.uint8
    # Sorted by path: 2.png (blue | red), then a/1.png (red | blue).
    assert arr[0, :, 0, 2].min() > 200 and arr[0, :, -1, 0].min() > 200
    assert arr[1, :, 0, 0].min() > 200 and arr[1, :, -1, 2].min() > 200
    from mmsora.utils.cli import UserError
    with pytest.raises(UserError, match='--out must be an .npz'):
        tool().main(['--images', str(tmp_path / 'imgs'), '--out', 'x.png'])
    # clip settings with pictures were ignored without a word
    with pytest.raises(UserError, match='--num-frames and --frame-stride are for --videos '
                                        'clips; --images makes a picture reference'):
        tool().main(['--images', str(tmp_path / 'imgs'), '--out', str(out),
                     '--num-frames', '8'])


@needs_videos
def test_clips_from_a_manifest(tmp_path):
    from mmsora.datasets.manifest import write_manifest
    manifest = tmp_path / 'videos.csv'
    write_manifest([dict(path=BIKES), dict(path=BUNNY)], str(manifest))
    out = tmp_path / 'clips.npz'
    tool().main(['--videos', str(manifest), '--out', str(out), '--num-frames', '3',
                 '--frame-stride', '2', '--image-size', '16', '--max-samples', '1'])
    with np.load(out) as data:
        arr = data['arr_0']
    assert arr.shape == (1, 3, 16, 16, 3) and arr.std() > 5  # real, varied frames
    # every clip too short: the error says why, not only 'no readable clip'
    from mmsora.utils.cli import UserError
    with pytest.raises(UserError, match=r'^no readable picture or clip among 2: nothing '
                                        r'written \(.* has \d+ frames, fewer than the 1999 '):
        tool().main(['--videos', str(manifest), '--out', str(out), '--num-frames', '1000',
                     '--frame-stride', '2', '--image-size', '16'])

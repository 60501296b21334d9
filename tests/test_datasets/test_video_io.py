"""mmsora.utils.video_io on real footage: probe, selective decode, mp4/gif writing, and
one clear error per kind of bad file."""
import os.path as osp

import av
import numpy as np
import pytest
import torch
from PIL import Image

from mmsora.utils.video_io import (VideoReadError, probe_video, read_video_frames,
                                   to_uint8_frames, write_gif, write_video)
from tests.shared_videos import BIKES, BUNNY, VIDEOS, needs_videos


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64))**2)
    return 10 * np.log10(255.0**2 / mse)


def decode_first(path, n):
    """Independent reference: the first ``n`` frames by a plain PyAV loop."""
    with av.open(path) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format='rgb24'))
            if len(frames) == n:
                break
    return np.stack(frames)


@pytest.fixture(scope='module')
def bikes_clip():
    """12 real frames, 64x64 (a crop of bikes.mp4)."""
    return read_video_frames(BIKES, range(12))[:, 100:164, 300:364]


@needs_videos
@pytest.mark.parametrize('path, expected', [
    (BIKES, dict(num_frames=250, fps=25.0, height=272, width=640, duration=10.0)),
    (BUNNY, dict(num_frames=132, fps=25.0, height=720, width=1280, duration=5.28)),
])
def test_probe(path, expected):
    info = probe_video(path)
    assert info.keys() == expected.keys()
    for k, v in expected.items():
        assert info[k] == pytest.approx(v), k
    assert isinstance(info['num_frames'], int) and isinstance(info['width'], int)


@needs_videos
def test_read_selected_frames_match_sequential_decode():
    ref = decode_first(BIKES, 30)
    indices = [7, 0, 29, 7, 3]
    frames = read_video_frames(BIKES, indices)
    assert frames.dtype == np.uint8 and frames.shape == (5, 272, 640, 3)
    np.testing.assert_array_equal(frames, ref[indices])


@needs_videos
def test_read_all_frames_of_a_written_clip(tmp_path, bikes_clip):
    path = str(tmp_path / 'clip.mp4')
    write_video(path, bikes_clip, fps=8)
    frames = read_video_frames(path)
    assert frames.shape == (12, 64, 64, 3)


@needs_videos
def test_read_past_the_end_names_file_and_length():
    with pytest.raises(VideoReadError, match=r'bikes\.mp4.*frame 300.*only 250 frames'):
        read_video_frames(BIKES, [0, 300])
    with pytest.raises(ValueError, match='negative frame index'):
        read_video_frames(BIKES, [-1])


@needs_videos
def test_write_video_round_trip(tmp_path, bikes_clip):
    path = str(tmp_path / 'sub' / 'rt.mp4')
    write_video(path, bikes_clip, fps=8)
    info = probe_video(path)
    assert (info['num_frames'], info['fps'], info['height'], info['width']) == (12, 8.0, 64, 64)
    back = read_video_frames(path)
    assert psnr(back, bikes_clip) > 30
    with av.open(path) as c:  # what players need: H.264 in yuv420p
        assert c.streams.video[0].codec_context.name == 'h264'
        assert c.streams.video[0].codec_context.pix_fmt == 'yuv420p'


@needs_videos
def test_write_video_takes_model_tensors_and_fractional_fps(tmp_path, bikes_clip):
    # The model's layout: float (3, T, H, W) in [-1, 1].
    x = torch.from_numpy(bikes_clip).permute(3, 0, 1, 2).float() / 127.5 - 1
    np.testing.assert_array_equal(to_uint8_frames(x), bikes_clip)
    path = str(tmp_path / 'f.mp4')
    write_video(path, x, fps=12.5)
    info = probe_video(path)
    assert info['fps'] == pytest.approx(12.5) and info['num_frames'] == 12
    assert psnr(read_video_frames(path), bikes_clip) > 30


def test_write_video_odd_size(tmp_path):
    frames = np.zeros((2, 15, 16, 3), np.uint8)
    path = str(tmp_path / 'odd.mp4')
    with pytest.raises(ValueError, match=r'even width and height.*16x15.*pad_odd'):
        write_video(path, frames, fps=8)
    write_video(path, frames, fps=8, pad_odd=True)
    info = probe_video(path)
    assert (info['height'], info['width'], info['num_frames']) == (16, 16, 2)


def test_frames_layout_errors():
    with pytest.raises(ValueError, match=r'\(T, H, W, 3\)'):
        to_uint8_frames(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r'\(3, T, H, W\)'):
        to_uint8_frames(np.zeros((2, 8, 8, 3), np.float32))


@needs_videos
def test_write_gif(tmp_path, bikes_clip):
    path = str(tmp_path / 'a.gif')
    write_gif(path, bikes_clip, fps=8)
    with Image.open(path) as im:
        assert im.n_frames == 12 and im.size == (64, 64)
        assert abs(im.info['duration'] - 125) <= 10  # GIF delays are in 1/100 s
        assert im.info['loop'] == 0
        im.seek(5)
        frame5 = np.asarray(im.convert('RGB'))
    assert psnr(frame5, bikes_clip[5]) > 20  # 256-colour palette


@pytest.fixture
def bad_files(tmp_path):
    files = {}
    files['zero'] = tmp_path / 'zero.mp4'
    files['zero'].write_bytes(b'')
    files['text'] = tmp_path / 'notes.mp4'
    files['text'].write_text('this is not a video\n' * 20)
    if osp.isfile(BIKES):
        with open(BIKES, 'rb') as f:
            head = f.read(2048)
        files['truncated'] = tmp_path / 'truncated.mp4'
        files['truncated'].write_bytes(head)
    return {k: str(v) for k, v in files.items()}


@pytest.mark.parametrize('reader', [probe_video, lambda p: read_video_frames(p, [0])])
@pytest.mark.parametrize('kind, reason', [('zero', 'empty'), ('text', 'not a readable'),
                                          ('truncated', 'not a readable')])
def test_bad_files_raise_naming_the_file(bad_files, reader, kind, reason):
    if kind not in bad_files:
        pytest.skip(f'test videos not found in {VIDEOS}')
    path = bad_files[kind]
    with pytest.raises(VideoReadError, match=reason) as info:
        reader(path)
    assert path in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == path


@pytest.mark.parametrize('reader', [probe_video, read_video_frames])
def test_missing_file(tmp_path, reader):
    path = str(tmp_path / 'nope.mp4')
    with pytest.raises(FileNotFoundError, match='nope.mp4'):
        reader(path)
    # a link whose file is gone (a dataset on an unmounted disk): said so
    (tmp_path / 'linked.mp4').symlink_to(tmp_path / 'gone' / 'clip.mp4')
    with pytest.raises(FileNotFoundError, match=r"linked.mp4' is a link to '.*gone/clip.mp4', "
                                                'which does not exist'):
        reader(str(tmp_path / 'linked.mp4'))


def test_file_without_video_stream(tmp_path):
    path = str(tmp_path / 'audio.mp4')
    with av.open(path, 'w') as c:
        stream = c.add_stream('aac', rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format='fltp',
                                           layout='mono')
        frame.sample_rate = 8000
        c.mux(stream.encode(frame))
        c.mux(stream.encode())
    with pytest.raises(VideoReadError, match='no video stream') as info:
        probe_video(path)
    assert path in str(info.value)


@pytest.mark.parametrize('fmt, demuxer', [('PNG', 'png_pipe'), ('JPEG', 'jpeg_pipe'),
                                          ('GIF', 'gif'), ('WEBP', 'webp_pipe')])
def test_a_picture_is_not_a_video(tmp_path, fmt, demuxer):
    # Before: FFmpeg's image demuxers made it a 1-frame video at 25 fps.
    path = str(tmp_path / 'picture.mp4')
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(path, format=fmt)
    with pytest.raises(VideoReadError, match=rf'a picture \({demuxer}\), not a video$') \
            as info:
        probe_video(path)
    assert info.value.path == path
    # read too, by the same rule (a manifest row with an fps is never probed: a picture
    # was read as a still clip)
    for indices in ([0], [0, 0, 0], None):
        with pytest.raises(VideoReadError, match=rf'a picture \({demuxer}\), not a video$'):
            read_video_frames(path, indices)


def test_pictures_in_a_row_are_a_video_to_probe_and_read(tmp_path):
    # three PNGs one after the other: FFmpeg's png_pipe gives 3 frames, a video to the
    # probe; the reader refused it as a picture by its demuxer alone
    path = tmp_path / 'three.mp4'
    for i in range(3):
        Image.fromarray(np.full((16, 24, 3), 80 * i, np.uint8)).save(tmp_path / f'{i}.png')
    path.write_bytes(b''.join((tmp_path / f'{i}.png').read_bytes() for i in range(3)))
    assert probe_video(str(path))['num_frames'] == 3
    frames = read_video_frames(str(path), [2, 0])
    assert frames.shape == (2, 16, 24, 3) and frames[0].mean() > frames[1].mean()


def test_one_frame_video_and_animated_gif_are_videos(tmp_path):
    one = str(tmp_path / 'one.mp4')
    write_video(one, np.zeros((1, 16, 16, 3), np.uint8), fps=8)
    assert probe_video(one)['num_frames'] == 1
    gif = str(tmp_path / 'anim.gif')
    frames = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (0, 128, 255)])
    write_gif(gif, frames, fps=10)
    assert probe_video(gif)['num_frames'] == 3
    # 'frame' in the singular for one (before: 'only 1 frames').
    with pytest.raises(VideoReadError, match=r'frame 2 was asked for but only 1 frame '
                       r'could be decoded$'):
        read_video_frames(one, [0, 2])

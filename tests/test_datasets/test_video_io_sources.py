"""What real video files hold beyond a plain encode, read as players show them: an
mp4 cut without re-encoding (an edit list dropping its first frames), a phone's
portrait clip (a rotation in the display matrix), recordings joined into one stream
of two sizes; and the memory of a clip's decode and resize. Each frame of the
synthetic clips carries its number in ten black / white bars."""
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from mmsora.datasets.transforms import SampleClipIndices
from mmsora.datasets.transforms.video import resize_frames
from mmsora.utils.video_io import VideoReadError, probe_video, read_video_frames

BITS = 10


def numbered(i, h=48, w=80):
    """A frame whose ten vertical bars spell ``i`` in binary (bar b white: bit b)."""
    a = np.zeros((h, w, 3), np.uint8)
    bar = w // BITS
    for b in range(BITS):
        if (i >> b) & 1:
            a[:, b * bar:(b + 1) * bar] = 255
    return a


def number_of(a):
    h, w = a.shape[:2]
    bar = w // BITS
    return sum(1 << b for b in range(BITS)
               if a[h // 4:3 * h // 4, b * bar + bar // 4:(b + 1) * bar - bar // 4].mean() > 127)


def write(path, n, h=48, w=80, first_pts=0, frame=numbered, codec='libx264', options=None,
          times=None):
    """``n`` frames at 25 fps (``times``: each frame's time in ms, a variable rate)."""
    with av.open(str(path), 'w') as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, 'yuv420p'
        s.options = options or {'crf': '10'}
        base = Fraction(1, 1000) if times else Fraction(1, 25)
        s.codec_context.time_base = base
        for i in range(n):
            f = av.VideoFrame.from_ndarray(frame(i, h, w), format='rgb24')
            f.pts, f.time_base = (times[i] if times else first_pts + i), base
            c.mux(s.encode(f))
        c.mux(s.encode())
    return str(path)


def test_an_edit_list_that_drops_frames_is_counted_as_decoded(tmp_path):
    # 50 frames muxed from pts -5: the mp4's edit list drops the first 5 (what
    # `ffmpeg -ss ... -c copy` writes). The container records 50 samples; 45 decode.
    path = write(tmp_path / 'cut.mp4', 50, first_pts=-5)
    assert av.open(path).streams.video[0].frames == 50
    info = probe_video(path)
    assert info['num_frames'] == 45  # before: 50, and clips asked for frames past the end
    frames = read_video_frames(path, [0, 44])
    assert [number_of(f) for f in frames] == [5, 49]
    # every clip drawn over the probed length decodes (before: 1 in 4 failed)
    sampler = SampleClipIndices(num_frames=16, frame_stride=2, seed=0)
    for _ in range(10):
        indices = sampler(dict(path=path, **info))['frame_indices']
        assert len(read_video_frames(path, indices)) == 16


def test_a_rotated_clip_is_read_upright(tmp_path):
    # A phone's portrait clip: stored 80 wide and 48 tall with a 90 degree rotation in
    # the mp4's track header, shown 48 wide and 80 tall (turned clockwise).
    def red_corner(i, h, w):
        a = np.zeros((h, w, 3), np.uint8)
        a[:h // 2, :w // 2] = (255, 0, 0)  # top left, as stored
        return a
    path = write(tmp_path / 'portrait.mp4', 4, frame=red_corner)
    data = bytearray(open(path, 'rb').read())
    at = data.find(b'tkhd')
    version = data[at + 4]
    matrix = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 2 + 2 + 2 + 2
    one = 0x10000
    data[matrix:matrix + 36] = struct.pack('>9i', 0, one, 0, -one, 0, 0, 0, 0, 0x40000000)
    open(path, 'wb').write(data)
    assert next(av.open(path).decode(video=0)).rotation == -90
    info = probe_video(path)
    assert (info['height'], info['width']) == (80, 48)  # before: 48 x 80
    frame = read_video_frames(path, [0])[0]
    assert frame.shape == (80, 48, 3)
    assert frame[5, -5, 0] > 200 and frame[5, 5].max() < 50  # red at the top right now
    assert frame[-5, -5].max() < 50


def test_a_stream_that_changes_size_is_read_at_its_first_size(tmp_path):
    # Two MPEG-TS recordings joined with cat: 80 x 48, then 64 x 48.
    a = write(tmp_path / 'a.ts', 30, w=80)
    b = write(tmp_path / 'b.ts', 30, w=64)
    joined = tmp_path / 'ab.ts'
    joined.write_bytes(open(a, 'rb').read() + open(b, 'rb').read())
    info = probe_video(str(joined))
    assert (info['num_frames'], info['height'], info['width']) == (60, 48, 80)
    # before: ValueError 'all input arrays must have the same shape', which neither
    # skip_corrupt nor extraction skipped
    frames = read_video_frames(str(joined), range(20, 40))
    assert frames.shape == (20, 48, 80, 3)
    assert [number_of(f) for f in frames[:10]] == list(range(20, 30))


def test_non_square_pixels_are_read_at_the_width_they_are_shown(tmp_path):
    # 96 x 64 stored with pixels 4/3 as wide as tall (HDV, DVD): shown 128 x 64, a
    # stored 32 x 32 square shown 43 wide. They were read 96 wide: squashed.
    path = str(tmp_path / 'anamorphic.mp4')
    with av.open(path, 'w') as c:
        s = c.add_stream('libx264', rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, 'yuv420p'
        s.codec_context.sample_aspect_ratio = Fraction(4, 3)
        for _ in range(3):
            a = np.zeros((64, 96, 3), np.uint8)
            a[16:48, 32:64] = 255
            c.mux(s.encode(av.VideoFrame.from_ndarray(a, format='rgb24')))
        c.mux(s.encode())
    info = probe_video(path)
    assert (info['height'], info['width']) == (64, 128)
    frame = read_video_frames(path, [0])[0]
    assert frame.shape == (64, 128, 3)
    assert 41 <= int((frame[32, :, 0] > 127).sum()) <= 44  # the square, shown 43 wide
    assert int((frame[:, 64, 0] > 127).sum()) == 32


@pytest.mark.parametrize('fps, target, stride', [
    (25, 10, 3),     # 8.33 fps; round(2.5) took 2 (12.5 fps)
    (23.9, 16, 2),   # 11.95; round(1.49) took 1 (23.9)
    (35, 10, 4),     # 8.75
    (30, 8, 4),      # 7.5 (as before)
    (25, 8, 3),      # 8.33 (as before)
    (24, 12, 2),     # exact
    (10, 16, 1),     # slower than the target: every frame
])
def test_the_stride_nearest_the_target_frame_rate(fps, target, stride):
    assert SampleClipIndices(num_frames=4, target_fps=target).stride_for(fps) == stride


MEASURE = """
import sys
from mmsora.datasets.transforms import ResizeCropVideo
from mmsora.utils.process_memory import peak_rss_mb, reset_peak_rss, rss_mb
from mmsora.utils.video_io import read_video_frames
def growth(fn):
    reset_peak_rss()
    before = rss_mb()
    out = fn()
    return out, int((peak_rss_mb() - before) * 2**20)
read_video_frames(sys.argv[1], [0])  # (the decoder's own buffers: not the clip's)
frames, decoded = growth(lambda: read_video_frames(sys.argv[1], range(64)))
_, resized = growth(lambda: ResizeCropVideo(size=(64, 64))(
    dict(frames=frames, img_shape=frames.shape[1:3])))
print(frames.nbytes, decoded, resized)
"""


def test_a_clip_decodes_and_resizes_without_copies_of_itself(tmp_path):
    # 64 frames of 480 x 640: a 59 MB clip. Before, the decode kept every frame and
    # then np.stack copied them all (2x the clip), and the resize turned the whole clip
    # into float32 (4x more) in every loader worker.
    import subprocess
    import sys
    path = write(tmp_path / 'big.mp4', 64, h=480, w=640)
    out = subprocess.run([sys.executable, '-c', MEASURE, path], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    clip, decode_growth, resize_growth = map(int, out.stdout.split())
    assert decode_growth < 1.4 * clip, decode_growth / clip  # (before: 2.05x)
    assert resize_growth < 1.5 * clip, resize_growth / clip  # (before: 4.7x)


def test_the_resize_in_chunks_gives_what_the_whole_clip_did(tmp_path):
    import torch
    import torch.nn.functional as F
    frames = np.random.default_rng(0).integers(0, 256, (9, 60, 80, 3), dtype=np.uint8)
    whole = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(24, 32),
                          mode='bilinear', align_corners=False, antialias=True)
    whole = whole.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(resize_frames(frames, (24, 32)), whole)
    assert np.array_equal(resize_frames(frames, (24, 32), chunk=2), whole)


@pytest.mark.parametrize('kind', ['h264', 'mov', 'vp9', 'cut', 'variable', 'joined',
                                  'mp4_gap', 'mkv_gap'])
def test_a_clip_far_into_a_video_is_read_by_seeking_with_the_same_frames(
        tmp_path, kind, monkeypatch):
    """A clip 2 s or more into a gap-free constant-rate mp4 / mov is decoded from the
    keyframe before it (it was decoded from the start: 5.3 s for a 16-frame clip two
    minutes into a 720p video, 0.2 s now), with the frames a decode from the start
    gives (B-frames included). Read from the start, with the same frames: WebM and
    Matroska (no frame count: a dropped frame's gap shifted every later frame by one
    in the first version of the seek), an mp4 whose edit list drops frames or whose
    frames leave a gap, a variable rate, MPEG-TS recordings joined with cat (clocks
    restarting: the first version read past the end there)."""
    import mmsora.utils.video_io as video_io
    n = 300  # 12 s at 25 fps, a keyframe every second
    gop = {'crf': '10', 'g': '25'}
    gap = [i if i < 25 else i + 1 for i in range(n)]  # one frame slot dropped at 1 s
    if kind in ('h264', 'mov'):
        path = write(tmp_path / f'v.{"mp4" if kind == "h264" else "mov"}', n,
                     options=dict(gop, bf='2'))
    elif kind == 'vp9':
        path = write(tmp_path / 'v.webm', n, codec='libvpx-vp9',
                     options=dict(gop, deadline='realtime'))
    elif kind == 'cut':
        path = write(tmp_path / 'v.mp4', n + 5, first_pts=-5, options=gop)
    elif kind == 'variable':  # 30 fps for 4 s, then 10 fps
        times = [round(1000 * i / 30) if i < 120 else 4000 + 100 * (i - 120) for i in range(n)]
        path = write(tmp_path / 'v.mkv', n, times=times, options=gop)
    elif kind in ('mp4_gap', 'mkv_gap'):
        path = write(tmp_path / f'v.{kind[:3]}', n, times=[40 * t for t in gap], options=gop)
    else:  # two MPEG-TS recordings joined with cat: their clocks both start at 0
        half = n // 2
        first = write(tmp_path / 'a.ts', half, options=gop)
        second = write(tmp_path / 'b.ts', half, options=gop,
                       frame=lambda i, h, w: numbered(i + half, h, w))
        path = str(tmp_path / 'v.ts')
        open(path, 'wb').write(open(first, 'rb').read() + open(second, 'rb').read())
    seeks = kind in ('h264', 'mov')
    shift = 5 if kind == 'cut' else 0
    decoded = []
    decode = video_io._decode

    def counting(*args):
        for frame in decode(*args):
            decoded.append(frame)
            yield frame
    monkeypatch.setattr(video_io, '_decode', counting)
    for start in (0, 49, 50, 51, 137, 250, 284):
        decoded.clear()
        frames = read_video_frames(path, range(start, start + 16))
        assert [number_of(f) - shift for f in frames] == list(range(start, start + 16)), start
        if seeks and start >= 50:  # from the keyframe before
            assert len(decoded) <= 1 + 25 + 16 + 4, (start, len(decoded))
        elif not seeks:
            assert len(decoded) >= start + 16  # read from the start
    # strided, unordered and repeated frame numbers far in
    indices = [290, 250, 253, 253, 299]
    assert [number_of(f) - shift for f in read_video_frames(path, indices)] == indices
    with pytest.raises(VideoReadError, match=r'frame 300 was asked for but only 300 frames'):
        read_video_frames(path, [280, 300])

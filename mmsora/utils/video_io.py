"""Video files in and out with PyAV: probe, decode selected frames, write mp4 and gif.

PyAV bundles its own FFmpeg (H.264 decode and libx264 encode), so no system ffmpeg is
needed. Frames are ``np.uint8`` arrays ``(T, H, W, 3)`` in RGB order; writers also take
the model's layout, a float tensor ``(3, T, H, W)`` in [-1, 1].
"""
import os
import os.path as osp
from fractions import Fraction

import numpy as np

from mmsora.utils.cli import note, plural

__all__ = ['VideoReadError', 'probe_video', 'read_video_frames', 'to_uint8_frames',
           'write_video', 'write_gif', 'note_odd_padding', 'READER_VERSION']

# Which frames read_video_frames gives for a file. Raise it with any change that reads
# the same file into other pixels (2: display-matrix rotation, non-square pixels
# widened, edit lists' dropped frames not counted, a size change mid-stream). A latent
# store records it, and a resume by a reader of another version is refused: its clips
# would be read two ways in one store.
READER_VERSION = 2

# FFmpeg opens pictures through its image demuxers, which it picks by content: 'image2'
# and 'image2pipe', and one '<format>_pipe' per picture format (png_pipe, jpeg_pipe,
# webp_pipe, tiff_pipe, ...; every FFmpeg demuxer named *_pipe is one of them); GIF and
# APNG, still or animated, have demuxers of their own. A picture comes out as a 1-frame
# "video" at a made-up 25 fps, so a PNG renamed to .mp4 probed as a video. A file is a
# picture when such a demuxer gives one frame: the demuxer follows the content, not the
# extension; a real video of one frame (an mp4) is not refused, nor an animated GIF.
_PICTURE_DEMUXERS = ('image2', 'image2pipe', 'gif', 'apng')


class VideoReadError(ValueError):
    """A video file exists but cannot be read (empty, corrupt, truncated, no video)."""

    def __init__(self, path, reason=None):
        if reason is None:  # a whole message: a DataLoader worker's error re-raised
            self.path, self.reason = None, path  # (torch rebuilds it from one string)
            super().__init__(path)
            return
        self.path, self.reason = path, reason
        super().__init__(f'cannot read video {path!r}: {reason}')


def _open(path):
    """Open ``path`` with PyAV and return ``(container, video_stream)``."""
    import av
    if not osp.isfile(path):
        if osp.islink(path):  # (said 'not found' of a file that is listed)
            raise FileNotFoundError(f'video file not found: {path!r} is a link to '
                                    f'{os.readlink(path)!r}, which does not exist')
        raise FileNotFoundError(f'video file not found: {path!r}')
    if osp.getsize(path) == 0:
        raise VideoReadError(path, 'the file is empty (0 bytes)')
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        reason = getattr(e, 'strerror', None) or str(e)
        raise VideoReadError(path, f'not a readable video container ({reason})') from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, 'the file has no video stream')
    return container, container.streams.video[0]


def _picture_format(container, num_frames):
    """The demuxer's name when the file is a still picture, else None."""
    name = container.format.name
    if num_frames == 1 and (name in _PICTURE_DEMUXERS or name.endswith('_pipe')):
        return name
    return None


def _decode(container, stream, path):
    """Yield decoded frames, turning FFmpeg errors into :class:`VideoReadError`."""
    import av
    try:
        for frame in container.decode(stream):
            yield frame
    except (av.FFmpegError, OSError) as e:
        reason = getattr(e, 'strerror', None) or str(e)
        raise VideoReadError(path, f'decoding failed ({reason})') from None


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` upright: its display
    matrix's rotation (a phone's portrait clip is stored sideways with a 90 degree
    one), 0 where it has none. As players and FFmpeg's command line (autorotate) do."""
    degrees = getattr(frame, 'rotation', 0) or 0
    return int(round(degrees / 90)) % 4


def _display_size(frame, stream):
    """``(width, height)`` the frame is shown at before any rotation: its stored size
    with the width scaled by the pixels' aspect (non-square pixels: HDV's 1440x1080
    shows 1920x1080; they were read squashed)."""
    aspect = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not aspect or aspect == 1:
        return frame.width, frame.height
    return max(1, round(frame.width * aspect)), frame.height


def _upright(frame, size):
    """RGB uint8 ``(H, W, 3)`` of a decoded ``frame``: scaled to ``size`` (width,
    height: the stream's first frame's as shown, :func:`_display_size`) where that is
    not its stored size (non-square pixels; a stream that changed size mid-way,
    joined recordings), then turned upright."""
    if (frame.width, frame.height) != size:
        array = frame.to_ndarray(width=size[0], height=size[1], format='rgb24')
    else:
        array = frame.to_ndarray(format='rgb24')
    turns = _quarter_turns(frame)
    return np.rot90(array, turns) if turns else array


def probe_video(path):
    """Frame count, frame rate, size and duration of a video file.

    The frame count is the container's when it records one that agrees with the
    stream's duration, else a full decode count (an mp4 cut without re-encoding keeps
    the frames its edit list drops, which no decoder gives: its recorded count was
    taken, and clips asked for frames past the end); the first frame is always
    decoded so that a file with a valid header but unreadable data is caught here
    rather than in a training worker. The size is the first frame's as shown: a clip
    with a rotation in its display matrix (a phone's portrait video) is as tall as
    players show it, one of non-square pixels as wide, as :func:`read_video_frames`
    gives its frames.

    Args:
        path (str): Video file.

    Returns:
        dict: ``num_frames`` (int), ``fps`` (float), ``height``, ``width`` (int) and
        ``duration`` (float, seconds).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoReadError: the file is empty, corrupt, has no decodable video stream, or
            is a still picture (a PNG or JPEG renamed to .mp4; before, it was probed
            as a 1-frame video at 25 fps, and training died on it).
    """
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        num_frames = int(stream.frames or 0)
        frames = _decode(container, stream, path)
        first = next(frames, None)
        if first is None:
            raise VideoReadError(path, 'no frame could be decoded')
        stream_duration = (float(stream.duration * stream.time_base)
                           if stream.duration is not None and stream.time_base is not None
                           else None)
        if num_frames > 0 and rate and stream_duration and \
                abs(num_frames - stream_duration * float(rate)) > 1.5:
            num_frames = 0  # frames the edit list drops: count what decodes
        if num_frames <= 0:
            num_frames = 1 + sum(1 for _ in frames)
        picture = _picture_format(container, num_frames)
        if picture is not None:
            raise VideoReadError(path, f'a picture ({picture}), not a video')
        width, height = _display_size(first, stream)
        if _quarter_turns(first) % 2:
            width, height = height, width
        if stream_duration is not None:
            duration = stream_duration
        elif container.duration is not None:
            duration = container.duration / 1e6  # AV_TIME_BASE is microseconds
        else:
            duration = None
    if rate:
        fps = float(rate)
    elif duration:
        fps = num_frames / duration
    else:
        raise VideoReadError(path, 'the stream records no frame rate')
    if duration is None:
        duration = num_frames / fps
    return dict(num_frames=num_frames, fps=fps, height=int(height), width=int(width),
                duration=duration)


# A clip whose first frame lies this many seconds or more into a constant-rate video
# is reached by seeking to the keyframe before it, not by decoding all that precedes it.
SEEK_AFTER_S = 2.0


class _SeekMismatch(Exception):
    """Frames after a seek whose times give no whole, consecutive frame numbers (a
    variable frame rate, timestamps missing): the file is read from the start."""


# Containers whose sample tables record every frame (mp4, mov): a stream there whose
# frame count is its duration times its nominal rate has no gap, and a frame's number
# is its time times the rate. Not Matroska / WebM (no frame count: a dropped frame's
# gap went unseen, and the seek shifted every later frame by one) nor streams such as
# MPEG-TS, whose clocks may restart (recordings joined with cat).
_SEEKABLE_CONTAINERS = ('mov', 'mp4')


def _seekable(container, stream) -> bool:
    """Whether frame numbers follow from frame times: an mp4 / mov stream whose
    recorded frame count, average rate and nominal rate agree exactly with its
    duration (no gap, no variable rate, no frames an edit list drops)."""
    if not set(container.format.name.split(',')) & set(_SEEKABLE_CONTAINERS):
        return False
    frames, nominal, base = stream.frames, stream.guessed_rate, stream.time_base
    if not (frames and nominal and base and stream.duration is not None
            and stream.average_rate == nominal):
        return False
    return abs(frames - stream.duration * base * nominal) < 0.5


def _numbered_frames(container, stream, path, seek_to=0):
    """``(frame number, frame)`` in display order from frame 0; with ``seek_to`` at
    least :data:`SEEK_AFTER_S` into a gap-free constant-rate mp4 / mov stream
    (:func:`_seekable`), frame 0 and then the frames from the keyframe before
    ``seek_to`` on, numbered by their times (checked whole and consecutive, else
    :class:`_SeekMismatch`)."""
    frames = _decode(container, stream, path)
    first = next(frames, None)
    if first is None:
        return
    yield 0, first
    rate, base = stream.average_rate, stream.time_base
    if not (seek_to and first.pts is not None and base and _seekable(container, stream)
            and seek_to >= SEEK_AFTER_S * float(rate)):
        yield from enumerate(frames, 1)
        return
    frames.close()
    container.seek(int(first.pts + seek_to / (rate * base)), stream=stream, backward=True,
                   any_frame=False)  # (the decoder's buffers are flushed)
    previous = None
    for frame in _decode(container, stream, path):
        if frame.pts is None:
            raise _SeekMismatch
        number = (frame.pts - first.pts) * base * rate  # exact: Fractions
        i = round(number)
        if abs(number - i) > 0.25 or (i > seek_to if previous is None else i != previous + 1):
            raise _SeekMismatch
        previous = i
        yield i, frame


def read_video_frames(path, indices=None):
    """Decode the frames at ``indices`` (all frames when None), upright (a rotation in
    the display matrix applied, as players do), at the width they are shown at
    (non-square pixels) and at one size (the first frame's, where a stream changes
    size mid-way).

    Decoding stops at the last frame asked for. A clip that starts within
    :data:`SEEK_AFTER_S` seconds is decoded from the start; one further into a
    gap-free constant-rate mp4 / mov from the keyframe before it (a 16-frame clip two
    minutes into a 720p video: 5.3 s to 0.2 s), its frame numbers those of a decode
    from the start (other files, and one whose frame times turn out not to allow
    this, are read from the start). Each frame
    asked for is converted into its place in the output as it is decoded (no second
    copy of the clip).

    Args:
        path (str): Video file.
        indices (Sequence[int], optional): Frame numbers (0-based, in display order;
            repeats and any order allowed); the output follows this order.

    Returns:
        np.ndarray: uint8 ``(T, H, W, 3)`` RGB frames.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoReadError: the file is unreadable, or holds fewer frames than asked for.
    """
    seek_to, places, last = 0, None, None
    if indices is not None:
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError(f'no frame indices given for {path!r}')
        if min(indices) < 0:
            raise ValueError(f'negative frame index {min(indices)} for {path!r}')
        places, last, seek_to = {}, max(indices), min(indices)
        for place, i in enumerate(indices):
            places.setdefault(i, []).append(place)
    try:
        return _read_frames(path, indices, places, last, seek_to)
    except _SeekMismatch:
        return _read_frames(path, indices, places, last, 0)


def _read_frames(path, indices, places, last, seek_to):
    container, stream = _open(path)
    # a picture demuxer: decode a second frame to know (probe_video's rule, a picture
    # is one frame; a manifest row with an fps is never probed and a picture was read
    # as a still clip)
    picture = _picture_format(container, 1) is not None
    stream.thread_type = 'AUTO'  # frame threading: several frames decode at once
    every, out, size, count = [], None, None, 0
    with container:
        for i, frame in _numbered_frames(container, stream, path, seek_to):
            count = i + 1
            if size is None:
                size = _display_size(frame, stream)
            if indices is None:
                every.append(_upright(frame, size))
                continue
            if i in places:
                array = _upright(frame, size)
                if out is None:
                    out = np.empty((len(indices), *array.shape), np.uint8)
                for place in places[i]:
                    out[place] = array
            if i >= max(last, 1 if picture else 0):
                break
        if picture and count == 1:
            raise VideoReadError(path, f'a picture ({_picture_format(container, 1)}), not '
                                 'a video')
    if indices is None:
        if not every:
            raise VideoReadError(path, 'no frame could be decoded')
        return np.stack(every)
    if last >= count:
        if seek_to:  # (the frames' times led past the end: count them from the start)
            raise _SeekMismatch
        raise VideoReadError(path, f'frame {last} was asked for but only '
                             f'{plural(count, "frame")} could be decoded')
    return out


def to_uint8_frames(frames):
    """Frames as uint8 ``(T, H, W, 3)``.

    Args:
        frames: uint8 ``(T, H, W, 3)`` array or tensor; or a floating array or tensor
            ``(3, T, H, W)`` in [-1, 1] (the model's layout), clipped and rounded.

    Returns:
        np.ndarray: uint8 ``(T, H, W, 3)``, C-contiguous.
    """
    if hasattr(frames, 'detach'):  # torch.Tensor, without importing torch here
        frames = frames.detach().cpu().float().numpy() if frames.is_floating_point() \
            else frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f'uint8 frames must be (T, H, W, 3), got {frames.shape}')
        return np.ascontiguousarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        if frames.ndim != 4 or frames.shape[0] != 3:
            raise ValueError(f'float frames must be (3, T, H, W) in [-1, 1], got '
                             f'{frames.shape}')
        out = np.clip((frames + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
        return np.ascontiguousarray(out.transpose(1, 2, 3, 0))
    raise ValueError(f'frames must be uint8 (T, H, W, 3) or float (3, T, H, W), got '
                     f'dtype {frames.dtype}')


def write_video(path, frames, fps, crf=18, pad_odd=False):
    """Write frames to an H.264 (libx264, yuv420p) mp4 that any player opens.

    Args:
        path (str): Output file; its folder is created.
        frames: See :func:`to_uint8_frames`.
        fps (float): Frame rate (fractional rates such as 12.5 or 29.97 are kept).
        crf (int): x264 quality, 0 (lossless) to 51; 18 looks lossless to most eyes.
        pad_odd (bool): yuv420p needs an even width and height; pad an odd one by
            repeating the last row/column instead of raising. Defaults to False.
    """
    import av
    frames = to_uint8_frames(frames)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        if not pad_odd:
            raise ValueError(f'H.264 (yuv420p) needs an even width and height, got '
                             f'{w}x{h} for {path!r}; crop, or pass pad_odd=True')
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
        _, h, w, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f'fps must be positive, got {fps}')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with av.open(path, mode='w') as container:
        stream = container.add_stream('libx264', rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        stream.options = {'crf': str(crf)}
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(arr, format='rgb24')
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def note_odd_padding(w, h, where=None):
    """Say once per process that clips of an odd ``w`` x ``h`` are written as mp4s one
    row / column of edge pixels larger (what ``write_video(pad_odd=True)`` does);
    ``where``: the folder of those mp4s, when the clips are also kept elsewhere at
    their sampled size (an .npz). Nothing is said for an even size."""
    if not (h % 2 or w % 2):
        return
    size = f'{w + w % 2}x{h + h % 2} (one row / column of edge pixels) for H.264'
    if where is None:
        note(f'the clips are {w}x{h}: padded to {size}', once=True)
    else:
        note(f'the clips are {w}x{h}: their mp4s in {where} are padded to {size}; the '
             '.npz keeps the sampled size', once=True)


def write_gif(path, frames, fps, loop=0):
    """Write frames to an animated GIF with PIL.

    Args:
        path (str): Output file; its folder is created.
        frames: See :func:`to_uint8_frames`.
        fps (float): Frame rate; GIF delays are whole hundredths of a second, so
            rates that do not divide 100 are approximated (8 fps plays at ~8.3).
        loop (int): Times to loop; 0 loops forever.
    """
    from PIL import Image
    frames = to_uint8_frames(frames)
    if fps <= 0:
        raise ValueError(f'fps must be positive, got {fps}')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], loop=loop,
                   duration=10 * max(1, round(100 / fps)), optimize=False)

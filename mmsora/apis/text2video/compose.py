"""Composition: pictures with a slow pan/zoom (Ken Burns), cross-fades, burned-in
subtitles and the speech track, written with PyAV as H.264 + AAC mp4.

The timeline is the speech: segment k is heard from the sum of the durations before
it, and a shot lasts as long as its segments. Cross-fades are centred on the shot
boundaries and take no time of their own, so the video is exactly as long as the
speech (to within one frame). PyAV is used directly rather than moviepy: moviepy
2.x pins ``pillow<12`` (this project runs with newer Pillow) and pipes every frame to
an ffmpeg subprocess, while PyAV is already a dependency and encodes in-process.
"""
import bisect
import math
import os
import os.path as osp
from fractions import Fraction
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from mmsora.utils.cli import Interrupted, UserError
from .speech import resample_audio
from .text_layout import check_font, draw_lines, find_font, wrap_lines

__all__ = ['RESOLUTIONS', 'parse_resolution', 'ken_burns_box', 'Composer', 'part_path',
           'not_written']

RESOLUTIONS = {'480p': (854, 480), '720p': (1280, 720), '1080p': (1920, 1080)}


def parse_resolution(text: str) -> Tuple[int, int]:
    """``'480p'``, ``'720p'``, ``'1080p'`` (any case) or ``'WxH'`` (even sides, at
    least 32) -> ``(W, H)``."""
    if text.lower() in RESOLUTIONS:
        return RESOLUTIONS[text.lower()]
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise UserError(f'--resolution {text!r}: use 480p, 720p or WxH (e.g. 640x360), '
                        'or 1080p') from None
    if w < 32 or h < 32 or w % 2 or h % 2:
        raise UserError(f'--resolution {text!r}: width and height must be even and >= 32 '
                        '(H.264 yuv420p)')
    return w, h


def ken_burns_box(src_size, out_size, progress: float, index: int, zoom: float):
    """Crop box ``(x0, y0, x1, y1)`` in the source at ``progress`` (0..1) of shot ``index``.

    The box has the output's aspect ratio and lies inside the source. Even shots zoom in
    from the full frame to 1/``zoom`` of it, odd shots zoom out; the box drifts
    horizontally on shots 0, 1, 4, 5, ... and vertically on the others, in alternating
    directions, so consecutive shots move differently.
    """
    sw, sh = src_size
    ow, oh = out_size
    scale = min(sw / ow, sh / oh)            # the largest box of the output's aspect
    cover_w, cover_h = ow * scale, oh * scale
    z = 1 + (zoom - 1) * (progress if index % 2 == 0 else 1 - progress)
    bw, bh = cover_w / z, cover_h / z
    drift = 2 * progress - 1 if (index // 2) % 2 == 0 else 1 - 2 * progress
    horizontal = index % 4 < 2
    free_x, free_y = (sw - bw) / 2, (sh - bh) / 2    # room to move either way
    cx = sw / 2 + (0.5 * drift * free_x if horizontal else 0)
    cy = sh / 2 + (0 if horizontal else 0.5 * drift * free_y)
    return (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)


_END = object()  # (what ``next`` gives when no picture is left)


def part_path(out: str) -> str:
    """The file an mp4 is written to before it is renamed ``out``: next to it (a rename
    within one folder), with the same extension (PyAV picks the format by it)."""
    return out + '.part' + (osp.splitext(out)[1] or '.mp4')


def not_written(out: str) -> str:
    """What the 'interrupted' line says when ``out`` was not written."""
    if osp.exists(out):
        return f'({out} not written: the file there before is kept)'
    return f'(nothing written to {out})'


class Composer:
    """Turn spoken shots and their pictures into an mp4.

    Args:
        size: Output ``(W, H)``, even; see :data:`RESOLUTIONS`.
        fps: Frame rate. Defaults to 24.
        fade: Cross-fade length in seconds (shortened to half the shorter shot).
        zoom: Pan/zoom strength: the box shrinks to ``1/zoom`` of the frame over a shot.
            1 gives still pictures.
        subtitles: Burn in each segment's text while it is spoken.
        font: Subtitle font file (default: found by :func:`find_font`).
        audio_rate: Sample rate of the AAC track.
        crf: x264 quality (0 lossless ... 51).
    """

    def __init__(self, size=(854, 480), fps: float = 24, fade: float = 0.5,
                 zoom: float = 1.12, subtitles: bool = True, font: Optional[str] = None,
                 audio_rate: int = 44100, crf: int = 20):
        if size[0] % 2 or size[1] % 2:
            raise UserError(f'the video size must be even (H.264), got {size[0]}x{size[1]}')
        for name, value, need in (('fps', fps, '> 0'), ('fade', fade, '>= 0'),
                                  ('zoom', zoom, '>= 1')):
            if not math.isfinite(value):  # (NaN passed the check below: it compares false)
                raise UserError(f'{name} must be a finite number {need}, got {value}')
        if fps <= 0 or fade < 0 or zoom < 1:
            raise UserError(f'need fps > 0, fade >= 0 and zoom >= 1; got fps={fps}, '
                            f'fade={fade}, zoom={zoom}')
        check_font(font)
        self.size, self.fps, self.fade, self.zoom = tuple(size), fps, fade, zoom
        self.subtitles, self.font, self.audio_rate, self.crf = subtitles, font, audio_rate, crf

    @property
    def picture_size(self) -> Tuple[int, int]:
        """The size to ask picture backends for: room for the zoom."""
        return tuple(int(round(v * self.zoom)) for v in self.size)

    # ------------------------------------------------------------------ #
    #                              Pictures                              #
    # ------------------------------------------------------------------ #
    @staticmethod
    def _frames(picture: np.ndarray) -> np.ndarray:
        """A picture or clip as ``(T, H, W, 3)`` uint8 (a view: nothing is copied)."""
        frames = picture[None] if picture.ndim == 3 else picture
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f'pictures must be uint8 (H, W, 3) or (T, H, W, 3), got '
                             f'{frames.dtype} {frames.shape}')
        return frames

    def _prepare(self, picture: np.ndarray) -> List[Image.Image]:
        """A picture or clip as PIL frames, small ones enlarged once (Lanczos)."""
        frames = self._frames(picture)
        images = [Image.fromarray(f) for f in frames]
        need = max(self.picture_size[0] / images[0].width,
                   self.picture_size[1] / images[0].height)
        if need > 1:
            new = (round(images[0].width * need), round(images[0].height * need))
            images = [im.resize(new, Image.LANCZOS) for im in images]
        return images

    def _shot_frame(self, frames, index, t, start, duration, clip_fps):
        """Shot ``index``'s picture at time ``t`` (may lie in a neighbour's fade)."""
        progress = min(max((t - start) / duration, 0.0), 1.0)
        k = int(max(t - start, 0) * clip_fps)
        period = max(2 * len(frames) - 2, 1)        # clips play forward then back
        k %= period
        image = frames[k if k < len(frames) else period - k]
        box = ken_burns_box(image.size, self.size, progress, index, self.zoom)
        return np.asarray(image.resize(self.size, Image.BILINEAR, box=box), np.float32)

    # ------------------------------------------------------------------ #
    #                              Subtitles                             #
    # ------------------------------------------------------------------ #
    def subtitle_overlay(self, text: str) -> Tuple[np.ndarray, int]:
        """RGBA band ``(h, W, 4)`` with the wrapped text, and the row it starts at."""
        w, h = self.size
        # from the shorter side: h // 18 made portrait subtitles (480x854) 47 px, three
        # lines a fifth of the frame
        size = max(10, min(w, h) // 18)
        while True:
            font = find_font(text, size, self.font)
            lines = wrap_lines(text, font, 0.9 * w)
            if len(lines) <= 3 or size <= 10:
                break
            size = max(10, int(size * 0.85))
        line_h = size * 1.25
        band_h = min(int(len(lines) * line_h + size * 0.6), h)
        band = Image.new('RGBA', (w, band_h), (0, 0, 0, 0))
        draw = ImageDraw.Draw(band)
        widest = max(font.getlength(line) for line in lines) if lines else 0
        pad = size * 0.4
        draw.rectangle((w / 2 - widest / 2 - pad, 0, w / 2 + widest / 2 + pad, band_h - 1),
                       fill=(0, 0, 0, 150))
        draw_lines(draw, lines, font, w / 2, size * 0.3)
        top = h - band_h - int(0.04 * h)
        return np.asarray(band, np.float32), max(top, 0)

    @staticmethod
    def _overlay(frame: np.ndarray, band: np.ndarray, top: int) -> np.ndarray:
        region = frame[top:top + band.shape[0]]
        alpha = band[..., 3:] / 255.0
        region[:] = region * (1 - alpha) + band[..., :3] * alpha
        return frame

    # ------------------------------------------------------------------ #
    #                             Composition                            #
    # ------------------------------------------------------------------ #
    def timeline(self, shots) -> Dict[str, list]:
        """Start/end times (s) of every shot and segment on the speech timeline."""
        shot_bounds, segment_bounds, t = [], [], 0.0
        for shot in shots:
            start = t
            for segment in shot.segments:
                segment_bounds.append((t, t + segment.duration))
                t += segment.duration
            shot_bounds.append((start, t))
        return dict(shots=shot_bounds, segments=segment_bounds)

    def _audio(self, shots) -> Iterator[np.ndarray]:
        """The speech at ``audio_rate``, one segment at a time, resampled when the video
        reaches it: all at once it was 10.6 MB of float32 a minute, twice while joined."""
        for shot in shots:
            for segment in shot.segments:
                yield resample_audio(segment.audio, segment.sample_rate, self.audio_rate)

    def compose(self, shots: Sequence, pictures: Iterable[np.ndarray], out: str,
                clip_fps: float = 8, progress: bool = True) -> dict:
        """Write the mp4.

        Args:
            shots: Spoken :class:`Shot` s (each segment has ``audio``).
            pictures: One picture or clip per shot (uint8): a sequence, or an iterator
                (e.g. :meth:`PictureBackend.iter_pictures`) that hands them over in
                shot order, each taken when the video first reaches its shot; taken
                to its end once the frames are written.
            out: The mp4 file.
            clip_fps: Frame rate at which clips play.
            progress: Show a progress bar over frames.

        Returns:
            dict: ``duration`` (s, of the speech), ``num_frames``, and the ``shots`` and
            ``segments`` start/end times.
        """
        import av
        given = len(pictures) if hasattr(pictures, '__len__') else None  # (a sequence)
        if (given is not None and given != len(shots)) or not shots:
            raise ValueError(f'need one picture per shot, got {given or 0} for '
                             f'{len(shots)} shots')
        bounds = self.timeline(shots)
        duration = bounds['shots'][-1][1]
        if duration <= 0:
            raise UserError('the speech is empty: nothing to show')
        if given is not None:
            for picture in pictures:  # (all checked before any is written)
                self._frames(picture)
        starts = [s for s, _ in bounds['shots']]
        fades = [min(self.fade, 0.5 * (shots[i].duration), 0.5 * shots[i + 1].duration)
                 for i in range(len(shots) - 1)]
        segments = [seg for shot in shots for seg in shot.segments]
        seg_starts = [s for s, _ in bounds['segments']]
        # Pictures are taken (from an iterator: made), prepared and subtitle bands
        # made when the timeline first needs them, and dropped once it has passed them
        # (a cross-fade needs the previous shot and the current): made all up front
        # and kept, they (with the speech resampled all at once) grew the peak by 6.3
        # MiB a shot at 480p, the pictures still made up front 2.2 MiB, now 0.4 MiB
        # (mostly the speech itself; docs/text2video.md, Measured)
        prepared, overlays = {}, {}
        num_frames = int(np.ceil(duration * self.fps - 1e-6))
        source, taken = iter(pictures), [0]  # (pictures taken from ``source``)

        def take(j):
            """Shot ``j``'s picture, prepared; the pictures of shots before it that no
            frame showed (shorter than a frame) are dropped."""
            while True:
                picture = next(source, _END)
                if picture is _END:
                    raise ValueError(f'need one picture per shot, got {taken[0]} for '
                                     f'{len(shots)} shots')
                self._frames(picture)
                taken[0] += 1
                if taken[0] > j:
                    return self._prepare(picture)

        def frame_at(t):
            i = max(bisect.bisect_right(starts, t) - 1, 0)
            start, end = bounds['shots'][i]
            fade_in = i > 0 and t < start + fades[i - 1] / 2
            fade_out = i < len(shots) - 1 and t >= end - fades[i] / 2 and fades[i] > 0
            oldest = i - 1 if fade_in else i    # the earliest shot this frame shows
            for j in [j for j in prepared if j < oldest]:
                del prepared[j]
            for j in range(oldest, i + 2 if fade_out else i + 1):  # (in shot order)
                if j not in prepared:
                    prepared[j] = take(j)

            def pic(j):
                s, e = bounds['shots'][j]
                return self._shot_frame(prepared[j], j, t, s, e - s, clip_fps)

            image = pic(i)
            if fade_in:
                a = (t - (start - fades[i - 1] / 2)) / fades[i - 1]
                image = pic(i - 1) * (1 - a) + image * a
            if fade_out:
                a = (t - (end - fades[i] / 2)) / fades[i]
                image = image * (1 - a) + pic(i + 1) * a
            if self.subtitles:
                k = max(bisect.bisect_right(seg_starts, t) - 1, 0)
                for j in [j for j in overlays if j < k]:
                    del overlays[j]
                if k not in overlays:
                    overlays[k] = self.subtitle_overlay(segments[k].text)
                image = self._overlay(image, *overlays[k])
            return np.clip(image + 0.5, 0, 255).astype(np.uint8)

        # Frames go to a part file next to ``out``, renamed over it once complete: an
        # error or Ctrl-C while writing replaced a finished video with a stub (or left a
        # playable but partial one under the final name)
        part = part_path(out)
        try:
            with av.open(part, mode='w') as container:
                self._write(container, frame_at, num_frames, self._audio(shots),
                            progress)
            # the rest (shots no frame reached), as a list's are checked
            for picture in source:
                self._frames(picture)
                taken[0] += 1
            if taken[0] != len(shots):
                raise ValueError(f'need one picture per shot, got {taken[0]} for '
                                 f'{len(shots)} shots')
        except BaseException as e:
            if osp.lexists(part):
                os.remove(part)
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                raise Interrupted(not_written(out), exit_code=getattr(e, 'exit_code', 130)) \
                    from None
            if isinstance(e, av.error.FFmpegError) and isinstance(e, OSError):
                # FFmpeg's file errors name no file ('No such file or directory' for
                # /proc/x.mp4, found once its buffer is flushed)
                raise UserError(f'cannot write {out}: {e.strerror}') from None
            raise
        os.replace(part, out)
        return dict(duration=duration, num_frames=num_frames, **bounds)

    def _write(self, container, frame_at, num_frames: int, audio: Iterator[np.ndarray],
               progress: bool) -> None:
        """Encode ``num_frames`` frames of ``frame_at(t)`` and the ``audio`` track (its
        pieces, at ``audio_rate``, taken as the frames reach them)."""
        import av
        rate = Fraction(self.fps).limit_denominator(1001)
        video = container.add_stream('libx264', rate=rate)
        video.width, video.height = self.size
        video.pix_fmt, video.options = 'yuv420p', {'crf': str(self.crf)}
        sound = container.add_stream('aac', rate=self.audio_rate, layout='mono')
        # samples encoded, and those taken from ``audio`` but not yet encoded
        sent, pending, ended = 0, np.zeros(0, np.float32), False
        # closed by the with block: an error ends the bar's line before it is printed
        with tqdm(range(num_frames), desc='video frames', disable=not progress) as bar:
            for n in bar:
                image = frame_at(n / self.fps)
                frame = av.VideoFrame.from_ndarray(image, format='rgb24')
                container.mux(video.encode(frame))
                last = n == num_frames - 1   # (the last frame takes all the rest)
                want = int(round((n + 1) / self.fps * self.audio_rate))
                while not ended and (last or sent + len(pending) < want):
                    piece = next(audio, None)
                    if piece is None:
                        ended = True
                    else:
                        pending = np.concatenate([pending, piece])
                upto = sent + len(pending) if last else min(sent + len(pending), want)
                if upto > sent:
                    chunk = av.AudioFrame.from_ndarray(pending[None, :upto - sent].copy(),
                                                       format='fltp', layout='mono')
                    chunk.sample_rate, chunk.pts = self.audio_rate, sent
                    container.mux(sound.encode(chunk))
                    pending, sent = pending[upto - sent:], upto
        container.mux(sound.encode(None))
        container.mux(video.encode(None))

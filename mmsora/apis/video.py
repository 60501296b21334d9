"""Saving sampled clips: one H.264 mp4 (and optionally one GIF) per sample."""
import numbers
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import torch

from mmsora.utils.video_io import note_odd_padding, write_gif, write_video

__all__ = ['video_paths', 'save_videos', 'is_clip_folder', 'check_pixels_float', 'DEFAULT_FPS']

# The frame rate sampled clips are written at when the config's sample_cfg gives no
# fps (tools/infer.py, the sample hook, text2video's mmsora pictures).
DEFAULT_FPS = 8

VIDEO_SUFFIX = '.mp4'
CLIP_SUFFIXES = ('.mp4', '.gif')


def is_clip_folder(out: Union[str, os.PathLike]) -> bool:
    """Whether the clips' ``out`` names a folder: it ends in ``/`` or has no suffix."""
    out = os.fspath(out)  # (a pathlib.Path had no endswith)
    return out.endswith(('/', osp.sep)) or not osp.splitext(out)[1]


def video_paths(out: Union[str, os.PathLike], labels: Sequence[Optional[int]],
                ext: str = VIDEO_SUFFIX) -> List[str]:
    """File names of the clips: ``{stem}_{i:03d}_label{y}{ext}`` (``{stem}_{i:03d}{ext}``
    for a label of None, e.g. the samples of a text-conditioned model).

    Args:
        out (str | os.PathLike): ``DIR/NAME.mp4`` puts clip i at ``DIR/NAME_{i:03d}_label{y}.mp4``
            (``DIR/NAME.gif`` the same with ``.gif``: GIFs alone); a path without a
            suffix (or ending in ``/``) is a folder, and clip i goes to
            ``out/sample_{i:03d}_label{y}.mp4``.
        labels (Sequence[int | None]): One class id (or None) per clip.
        ext (str): Suffix of the files (``'.mp4'`` or ``'.gif'``).

    Raises:
        ValueError: ``out`` has a suffix other than ``.mp4`` or ``.gif``, or a label is
            not a class id.
    """
    out = os.fspath(out)
    stem, suffix = osp.splitext(out)
    if is_clip_folder(out):
        stem = osp.join(out, 'sample')
    elif suffix.lower() not in CLIP_SUFFIXES:
        label = '' if not labels or labels[0] is None else '_label0'
        raise ValueError(f'clips are saved as NAME.mp4 (files NAME_000{label}.mp4, ...), '
                         f'NAME.gif (GIFs alone) or into a folder, got {out!r}')
    bad = [y for y in labels if y is not None and not _class_id(y)]
    if bad:  # (a string was an 'invalid literal for int()' traceback)
        raise ValueError(f'labels are class ids (ints) or None, got {bad[0]!r}')
    return [f'{stem}_{i:03d}{"" if y is None else f"_label{int(y)}"}{ext}'
            for i, y in enumerate(labels)]


def check_pixels_float(pixels: torch.Tensor, what: str) -> None:
    """Refuse integer pixels where floats in [-1, 1] are saved (save_videos' clips,
    save_image_grid's pictures): uint8 128 was taken as 128 in [-1, 1], clamped white."""
    if not pixels.is_floating_point():
        raise ValueError(f'{what} are floats in [-1, 1], got {pixels.dtype}; pass uint8 '
                         'pixels in [0, 255] as x.float() / 127.5 - 1')


def _class_id(value) -> bool:
    if torch.is_tensor(value):
        return value.numel() == 1 and not value.is_floating_point()
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def save_videos(videos: torch.Tensor, out: Union[str, os.PathLike], fps: float,
                labels: Optional[Sequence[Optional[int]]] = None,
                gif: bool = False) -> List[str]:
    """Write each sampled clip as an H.264 mp4 (PyAV), and as a GIF when ``gif``.

    Args:
        videos (Tensor): Clips (N, 3, T, H, W), floats in [-1, 1] (values outside are
            clipped; integer pixels are refused), as :func:`~mmsora.apis.sample_images`
            returns them.
        out (str | os.PathLike): ``NAME.mp4``, ``NAME.gif`` (GIFs alone) or a folder; see
            :func:`video_paths`.
        fps (float): Frame rate written into the files.
        labels (Sequence[int | None], optional): Class of each clip, named in its file
            (``NAME_000_label3.mp4``); None: no label in the names (``NAME_000.mp4``,
            as a text model's clips are named).
        gif (bool): Also write ``.gif`` files beside the mp4s. Defaults to False.

    Returns:
        list[str]: The files written, mp4s first, in sample order. An mp4 of an odd
        width or height is one column or row of edge pixels larger (H.264 needs an even
        size; a note says so once), a GIF the size of the clips.
    """
    if videos.dim() != 5 or videos.shape[1] != 3:
        shape = f'expected clips (N, 3, T, H, W), got shape {tuple(videos.shape)}'
        if videos.dim() == 5 and videos.shape[2] == 3:  # (Latte's and diffusers' layout)
            raise ValueError(f'{shape}: they look like (N, T, 3, H, W) clips; pass '
                             'x.permute(0, 2, 1, 3, 4)')
        raise ValueError(f'{shape}; latent models need a VAE (model.vae) to make videos')
    check_pixels_float(videos, 'clips')
    if fps <= 0:
        raise ValueError(f'fps must be positive, got {fps}')
    out = os.fspath(out)
    labels = [None] * len(videos) if labels is None else list(labels)
    if len(labels) != len(videos):
        raise ValueError(f'got {len(labels)} labels for {len(videos)} clips')
    gif_alone = not is_clip_folder(out) and osp.splitext(out)[1].lower() == '.gif'
    mp4s = [] if gif_alone else video_paths(out, labels)
    gifs = video_paths(out, labels, ext='.gif') if gif or gif_alone else []
    videos = videos.detach().float().cpu()
    h, w = videos.shape[-2:]
    if mp4s:  # (a GIF takes any size)
        note_odd_padding(w, h)
    for path, clip in zip(mp4s, videos):
        # yuv420p needs an even size: a 15x15 model's samples were refused once drawn,
        # and ended a training run at its first sample hook
        write_video(path, clip, fps, pad_odd=True)            # clip: (3, T, H, W)
    for path, clip in zip(gifs, videos):
        write_gif(path, clip, fps)
    return mp4s + gifs

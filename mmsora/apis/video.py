"""Saving sampled clips: one H.264 mp4 (and optionally one GIF) per sample."""
import os.path as osp
from typing import List, Optional, Sequence

import torch

from mmsora.utils.video_io import write_gif, write_video

__all__ = ['video_paths', 'save_videos', 'is_clip_folder']

VIDEO_SUFFIX = '.mp4'


def is_clip_folder(out: str) -> bool:
    """Whether the clips' ``out`` names a folder: it ends in ``/`` or has no suffix."""
    return out.endswith(('/', osp.sep)) or not osp.splitext(out)[1]


def video_paths(out: str, labels: Sequence[int], ext: str = VIDEO_SUFFIX) -> List[str]:
    """File names of the clips: ``{stem}_{i:03d}_label{y}{ext}`` (``{stem}_{i:03d}{ext}``
    for a label of None, e.g. the samples of a text-conditioned model).

    Args:
        out (str): ``DIR/NAME.mp4`` puts clip i at ``DIR/NAME_{i:03d}_label{y}.mp4``;
            a path without a suffix (or ending in ``/``) is a folder, and clip i goes
            to ``out/sample_{i:03d}_label{y}.mp4``.
        labels (Sequence[int | None]): One class id (or None) per clip.
        ext (str): Suffix of the files (``'.mp4'`` or ``'.gif'``).

    Raises:
        ValueError: ``out`` has a suffix other than ``.mp4``.
    """
    stem, suffix = osp.splitext(out)
    if is_clip_folder(out):
        stem = osp.join(out, 'sample')
    elif suffix.lower() != VIDEO_SUFFIX:
        label = '' if not labels or labels[0] is None else '_label0'
        raise ValueError(f'--out for video samples is NAME.mp4 (files NAME_000{label}.mp4, '
                         f'...), a folder, or NAME.npz (all samples in one file), got '
                         f'{out!r}')
    return [f'{stem}_{i:03d}{"" if y is None else f"_label{int(y)}"}{ext}'
            for i, y in enumerate(labels)]


def save_videos(videos: torch.Tensor, out: str, fps: float,
                labels: Optional[Sequence[int]] = None, gif: bool = False) -> List[str]:
    """Write each sampled clip as an H.264 mp4 (PyAV), and as a GIF when ``gif``.

    Args:
        videos (Tensor): Clips (N, 3, T, H, W) in [-1, 1] (values outside are clipped).
        out (str): ``NAME.mp4`` or a folder; see :func:`video_paths`.
        fps (float): Frame rate written into the files.
        labels (Sequence[int], optional): Class of each clip (named in the file);
            defaults to 0 for all.
        gif (bool): Also write ``.gif`` files beside the mp4s. Defaults to False.

    Returns:
        list[str]: The files written, mp4s first, in sample order.
    """
    if videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f'expected clips (N, 3, T, H, W), got shape {tuple(videos.shape)}; '
                         'latent models need a VAE (model.vae) to make videos')
    if fps <= 0:
        raise ValueError(f'fps must be positive, got {fps}')
    labels = [0] * len(videos) if labels is None else list(labels)
    if len(labels) != len(videos):
        raise ValueError(f'got {len(labels)} labels for {len(videos)} clips')
    videos = videos.detach().float().cpu()
    written = []
    for path, clip in zip(video_paths(out, labels), videos):
        write_video(path, clip, fps)                          # clip: (3, T, H, W)
        written.append(path)
    if gif:
        for path, clip in zip(video_paths(out, labels, ext='.gif'), videos):
            write_gif(path, clip, fps)
            written.append(path)
    return written

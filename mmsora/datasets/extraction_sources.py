"""What ``tools/extract_features.py`` encodes: pictures of an ImageFolder tree or clips
of the videos in a manifest, each with its label and caption.

A source item is ``(tensor or None, global index)``: ``None`` marks a file that cannot
be read, so the extraction skips it (and records it in the store's index) instead of
stopping hours into a run.
"""
import hashlib
import itertools
import json
import os.path as osp

import torch
from PIL import Image
from torch.utils.data import Dataset

from mmsora.utils.cli import first_line
from mmsora.utils.video_io import VideoReadError
from .image_folder import center_crop_arr, image_to_tensor, load_image, scan_image_folder
from .manifest import load_manifest
from .transforms.video import (ClipTooShortError, DecodeFrames, PackVideoInputs,
                               ResizeCropVideo, SampleClipIndices)

__all__ = ['ImageSource', 'ClipSource', 'collate_sources', 'fingerprint_items']


def fingerprint_items(items, chunk=4096):
    """sha256 hex digest of a sequence of JSON-able tuples, fed to the hash as they are
    iterated (the JSON of ``chunk`` of them at a time): a million manifest rows take
    about a second and no copy of them."""
    digest, items = hashlib.sha256(), iter(items)
    while True:
        part = list(itertools.islice(items, chunk))
        if not part:
            return digest.hexdigest()
        digest.update(json.dumps(part, ensure_ascii=False).encode())


class ImageSource(Dataset):
    """Pictures of ``root/class/*.jpg`` with DiT's center crop; class name as caption.

    Args:
        root (str): ImageFolder root.
        image_size (int): Side of the square crop.
    """

    def __init__(self, root, image_size):
        self.root, self.image_size = root, image_size
        self.classes, self.samples = scan_image_folder(root)
        self.labels = [label for _, label in self.samples]
        self.names = [path for path, _ in self.samples]
        # A class folder's name is the picture's caption ("golden_retriever" ->
        # "golden retriever") when a text encoder is used.
        self.captions = [self.classes[label].replace('_', ' ') for label in self.labels]
        self.indices = list(range(len(self.samples)))

    def frames_shape(self):
        """(H, W) of every item (no frame axis)."""
        return None, self.image_size, self.image_size

    def fingerprint(self, with_captions=False):
        """Digest of the items in order: relative paths and labels (and captions, the
        class names, ``with_captions``): other files with the same count change it."""
        if with_captions:
            return fingerprint_items(zip(self.names, self.labels, self.captions))
        return fingerprint_items(zip(self.names, self.labels))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        gidx = self.indices[i]
        path = osp.join(self.root, self.names[gidx])
        try:
            image = image_to_tensor(center_crop_arr(load_image(path), self.image_size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return first_line(e), gidx
        return image, gidx


class ClipSource(Dataset):
    """One clip per manifest row: center clip in time, resize + center crop in space;
    or ``clips_per_video`` clips a row, spread evenly over the video (the first
    window, the last, and evenly between), each an item of its own (its label and
    caption the row's; its name ``PATH (clip k of K)``).

    Args:
        manifest (str): CSV / JSONL manifest (``tools/make_manifest.py``).
        num_frames (int): Frames per clip.
        size (tuple[int, int]): Output (H, W).
        frame_stride (int, optional): Source-frame step; or
        target_fps (float, optional): the clip's frame rate (step = fps / target).
        pad (str, optional): For short videos, see :class:`SampleClipIndices`.
        data_root (str, optional): Where relative video paths resolve.
        require_caption (bool): Every row must have a caption (text encoders).
        clips_per_video (int): Clips taken from each video. Defaults to 1 (the center).
    """

    def __init__(self, manifest, num_frames, size, frame_stride=None, target_fps=None,
                 pad=None, data_root=None, require_caption=False, clips_per_video=1):
        require = ('path', 'caption') if require_caption else ('path',)
        self.rows = load_manifest(manifest, data_root=data_root, require=require)
        self.num_frames, self.size = num_frames, tuple(size)
        if clips_per_video < 1:
            raise ValueError(f'clips_per_video must be >= 1, got {clips_per_video}')
        self.clips = k = clips_per_video
        clip = SampleClipIndices(num_frames, frame_stride=frame_stride,
                                 target_fps=target_fps, mode='center' if k == 1 else
                                 'position', pad=pad, seed=0)
        clip.pad_hint = '--pad loop (or repeat_last)'  # tools/extract_features.py's
        self.steps = [
            clip,
            DecodeFrames(),
            ResizeCropVideo(self.size, crop='center', seed=0),
            PackVideoInputs(),
        ]
        self.labels = [r.get('label', -1) for r in self.rows for _ in range(k)]
        self.names = [r['path'] if k == 1 else f'{r["path"]} (clip {j + 1} of {k})'
                      for r in self.rows for j in range(k)]
        self.captions = [r.get('caption', '') for r in self.rows for _ in range(k)]
        self.indices = list(range(len(self.rows) * k))

    def frames_shape(self):
        return self.num_frames, *self.size

    def fingerprint(self, with_captions=False):
        """Digest of the rows in order: what each clip is made from (its path, label,
        and the frame count and fps the manifest gives, which place the clip) and,
        ``with_captions``, its caption: rows shuffled, relabelled, recaptioned or
        pointing at other files change it."""
        # (absolute: --data-root data and --data-root $PWD/data are the same files)
        rows = ((osp.abspath(r['path']), r.get('label', -1), r.get('num_frames'), r.get('fps'))
                + ((r.get('caption', ''),) if with_captions else ()) for r in self.rows)
        return fingerprint_items(rows)

    def slower_than(self, fps):
        """``(count, first row)`` of the rows whose manifest fps is below ``fps``:
        their clips take every frame and run slower than asked. Rows without an fps
        (probed only when decoded) are not counted."""
        slow = (r for r in self.rows if r.get('fps') is not None and r['fps'] < fps)
        first = next(slow, None)
        return (0, None) if first is None else (1 + sum(1 for _ in slow), first)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        gidx = self.indices[i]
        results = dict(self.rows[gidx // self.clips], sample_idx=gidx)
        if self.clips > 1:
            results['clip_position'] = (gidx % self.clips) / (self.clips - 1)
        try:
            for step in self.steps:
                results = step(results)
        except (VideoReadError, FileNotFoundError, ClipTooShortError) as e:
            return first_line(e), gidx
        return results['images'], gidx


def collate_sources(batch):
    """Stack readable items; keep ``(global index, None or why it was skipped)`` of all,
    in order (an item is a tensor, or the reason it could not be read)."""
    items = [x for x, _ in batch if torch.is_tensor(x)]
    return (torch.stack(items) if items else None,
            [(gidx, None if torch.is_tensor(x) else x) for x, gidx in batch])

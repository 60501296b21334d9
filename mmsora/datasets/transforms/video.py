"""Video transforms (mmcv style): sample clip indices, decode, resize-crop, flip, pack.

A pipeline runs on a ``results`` dict built from a manifest row (``path``, optional
``num_frames``, ``fps``, ``caption``, ``label``)::

    pipeline = [
        dict(type='SampleClipIndices', num_frames=16, target_fps=12.5),
        dict(type='DecodeFrames'),
        dict(type='ResizeCropVideo', size=(256, 256)),
        dict(type='RandomHorizontalFlipVideo'),
        dict(type='PackVideoInputs'),
    ]

Random draws come from ``results['rng']`` (an ``np.random.Generator`` that
``VideoDataset`` passes in) or else from the transform's own per-process generator;
the global numpy/torch RNGs are never touched, so the data stream depends only on seeds.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform

from mmsora.registry import TRANSFORMS
from mmsora.utils.cli import plural
from mmsora.utils.video_io import probe_video, read_video_frames
from ..utils import WorkerRNGMixin, draw_seed

__all__ = ['ClipTooShortError', 'LoadVideoInfo', 'SampleClipIndices', 'DecodeFrames',
           'ResizeCropVideo', 'RandomHorizontalFlipVideo', 'FramesToTensor',
           'PackVideoInputs', 'frames_to_tensor', 'resize_frames']


class ClipTooShortError(ValueError):
    """A video holds fewer frames than the clip being sampled needs."""


class _RandomTransform(WorkerRNGMixin, BaseTransform):
    """A transform that draws from ``results['rng']`` or its own per-process generator."""

    def __init__(self, seed=None):
        self.seed = draw_seed(seed)

    def _generator(self, results):
        rng = results.get('rng')
        return rng if rng is not None else self.rng


def _fill_video_info(results):
    """Probe ``results['path']`` for any of num_frames/fps/height/width not yet known."""
    keys = ('num_frames', 'fps', 'height', 'width')
    if any(results.get(k) is None for k in keys):
        info = probe_video(results['path'])
        for k in keys:
            if results.get(k) is None:
                results[k] = info[k]
    return results


# --------------------------------------------------------------------------- #
#                              Temporal sampling                               #
# --------------------------------------------------------------------------- #
@TRANSFORMS.register_module()
class LoadVideoInfo(BaseTransform):
    """Fill ``num_frames``, ``fps``, ``height``, ``width`` by probing ``path``.

    Values already present (e.g. from the manifest) are kept, and the file is opened
    only when one is missing.
    """

    def transform(self, results):
        return _fill_video_info(results)


@TRANSFORMS.register_module()
class SampleClipIndices(_RandomTransform):
    """Choose the frame numbers of one clip: ``num_frames`` frames, ``stride`` apart.

    The stride is the whole step that brings the clip's rate ``fps / stride`` nearest
    to ``target_fps`` (at least 1; between two equally near, the faster) when
    ``target_fps`` is set, else ``frame_stride``, else 1; the clip spans ``(num_frames - 1) * stride + 1``
    source frames, placed at random or in the middle of the video.

    Adds ``frame_indices`` (int64 array), ``frame_stride`` and ``clip_fps`` (the
    sampled clip's frame rate, ``fps / stride``); probes the file when ``num_frames``
    or ``fps`` is missing.

    Args:
        num_frames (int): Frames per clip. Defaults to 16.
        frame_stride (int, optional): Fixed stride; exclusive with ``target_fps``.
        target_fps (float, optional): Frame rate to sample at.
        mode (str): ``'random'`` or ``'center'`` temporal crop, or ``'position'``: the
            window at ``results['clip_position']`` (0 the first, 1 the last; what
            ``tools/extract_features.py --clips-per-video`` spreads). Defaults to
            'random'.
        pad (str, optional): For videos shorter than the clip: None raises
            :class:`ClipTooShortError`; ``'loop'`` cycles through the strided frames
            from the start; ``'repeat_last'`` repeats the last strided frame.
        seed (int, optional): Seed of the transform's own generator (used when
            ``results`` holds no ``rng``); None draws one from torch's global RNG.

    ``pad_hint`` is how :class:`ClipTooShortError`'s message names the padding: the
    pipeline's setting by default; a tool sets its own option there
    (``tools/extract_features.py``: ``--pad``).
    """

    pad_hint = "pad='loop' (or 'repeat_last') in the pipeline's SampleClipIndices"

    def __init__(self, num_frames=16, frame_stride=None, target_fps=None, mode='random',
                 pad=None, seed=None):
        super().__init__(seed)
        if num_frames < 1:
            raise ValueError(f'num_frames must be >= 1, got {num_frames}')
        if frame_stride is not None and target_fps is not None:
            raise ValueError('give frame_stride or target_fps, not both')
        if frame_stride is not None and frame_stride < 1:
            raise ValueError(f'frame_stride must be >= 1, got {frame_stride}')
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f'target_fps must be positive, got {target_fps}')
        if mode not in ('random', 'center', 'position'):
            raise ValueError(f"mode must be 'random', 'center' or 'position', got {mode!r}")
        if pad not in (None, 'loop', 'repeat_last'):
            raise ValueError(f"pad must be None, 'loop' or 'repeat_last', got {pad!r}")
        self.num_frames, self.frame_stride, self.target_fps = num_frames, frame_stride, target_fps
        self.mode, self.pad = mode, pad

    def stride_for(self, fps):
        """Source-frame step for a video at ``fps``."""
        if self.target_fps is not None:
            # Nearest in frame rate, not in steps: round(fps / target) took 25 -> 10 fps
            # at step 2 (12.5 fps) where step 3 gives 8.33, and rounded halves to even.
            ratio = fps / self.target_fps
            steps = {max(1, math.floor(ratio)), max(1, math.ceil(ratio))}
            return min(steps, key=lambda k: (abs(fps / k - self.target_fps), k))
        return self.frame_stride or 1

    def transform(self, results):
        if results.get('num_frames') is None or results.get('fps') is None:
            _fill_video_info(results)
        total, stride = int(results['num_frames']), self.stride_for(results['fps'])
        span = (self.num_frames - 1) * stride + 1
        if total >= span:
            if self.mode == 'center':
                start = (total - span) // 2
            elif self.mode == 'position':  # 0: the first window, 1: the last
                start = int(round(float(results['clip_position']) * (total - span)))
            else:
                start = int(self._generator(results).integers(0, total - span + 1))
            indices = start + stride * np.arange(self.num_frames)
        elif self.pad is None:
            raise ClipTooShortError(
                f'video {results.get("path")!r} has {plural(total, "frame")} '
                f'but a clip of {self.num_frames} frames at stride {stride} needs {span}; '
                'use shorter '
                f'clips, a smaller stride, or {self.pad_hint}')
        else:
            strided = np.arange(0, total, stride)
            if self.pad == 'loop':
                indices = strided[np.arange(self.num_frames) % len(strided)]
            else:
                indices = strided[np.minimum(np.arange(self.num_frames), len(strided) - 1)]
        results['frame_indices'] = indices.astype(np.int64)
        results['frame_stride'] = stride
        results['clip_fps'] = results['fps'] / stride
        return results

    def __repr__(self):
        return (f'{self.__class__.__name__}(num_frames={self.num_frames}, frame_stride='
                f'{self.frame_stride}, target_fps={self.target_fps}, mode={self.mode!r}, '
                f'pad={self.pad!r})')


@TRANSFORMS.register_module()
class DecodeFrames(BaseTransform):
    """Decode ``frame_indices`` (all frames when absent) of ``path`` into ``frames``.

    Adds ``frames`` (uint8 ``(T, H, W, 3)``), ``ori_shape`` and ``img_shape`` (H, W).
    """

    def transform(self, results):
        frames = read_video_frames(results['path'], results.get('frame_indices'))
        results['frames'] = frames
        results['ori_shape'] = results['img_shape'] = frames.shape[1:3]
        return results


# --------------------------------------------------------------------------- #
#                              Spatial transforms                              #
# --------------------------------------------------------------------------- #
def resize_frames(frames, size, interpolation='bilinear', chunk=4):
    """Resize uint8 ``(T, H, W, 3)`` frames to ``size`` (H, W), antialiased like PIL.

    ``chunk`` frames at a time go through float32 into the uint8 output: a whole
    1080p clip in float32 was four times the clip (64 frames: 1.6 GB beside the 0.4 GB
    decoded) in every loader worker. Each frame's result is the same."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    out = np.empty((len(frames), *size, 3), np.uint8)
    for start in range(0, len(frames), chunk):
        part = np.ascontiguousarray(frames[start:start + chunk])
        x = torch.from_numpy(part).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=tuple(size), mode=interpolation, align_corners=False,
                          antialias=True)                              # (t, 3, H', W')
        out[start:start + chunk] = x.clamp_(0, 255).round_().to(torch.uint8).permute(
            0, 2, 3, 1).numpy()
    return out


@TRANSFORMS.register_module()
class ResizeCropVideo(_RandomTransform):
    """Resize the short side so the frames cover ``size``, then crop to exactly ``size``.

    With ``keep_aspect`` the frames are scaled by ``max(H / h, W / w)`` (each side
    rounded, never below the target), then cropped; without it they are stretched to
    ``size``. ``round_to`` rounds the target down to a multiple first: latent DiTs
    need sides divisible by VAE factor x patch size (8 x 2 = 16), so a 480p target of
    ``(480, 854)`` with ``round_to=16`` gives ``(480, 848)``.

    Updates ``frames`` and ``img_shape``; adds ``crop_bbox`` (x0, y0, x1, y1) in the
    resized frame.

    Args:
        size (int | tuple[int, int]): Output (H, W); an int means square.
        keep_aspect (bool): Resize-then-crop (True) or stretch (False). Defaults to True.
        crop (str): ``'center'`` or ``'random'``. Defaults to 'center'.
        round_to (int, optional): Round each target side down to a multiple of this.
        interpolation (str): ``'bilinear'`` or ``'bicubic'`` (antialiased when
            shrinking). Defaults to 'bilinear'.
        seed (int, optional): Seed of the transform's own generator (random crops).
    """

    def __init__(self, size, keep_aspect=True, crop='center', round_to=None,
                 interpolation='bilinear', seed=None):
        super().__init__(seed)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if round_to:
            h, w = h // round_to * round_to, w // round_to * round_to
        if h < 1 or w < 1:
            raise ValueError(f'size {size} rounds to {h}x{w} with round_to={round_to}')
        if crop not in ('center', 'random'):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if interpolation not in ('bilinear', 'bicubic'):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got "
                             f'{interpolation!r}')
        self.size = (h, w)
        self.keep_aspect, self.crop, self.interpolation = keep_aspect, crop, interpolation

    def resized_shape(self, h, w):
        """(H', W') that frames of size (h, w) are resized to before cropping."""
        th, tw = self.size
        if not self.keep_aspect:
            return th, tw
        scale = max(th / h, tw / w)
        return max(th, round(h * scale)), max(tw, round(w * scale))

    def transform(self, results):
        frames = results['frames']
        th, tw = self.size
        rh, rw = self.resized_shape(*frames.shape[1:3])
        frames = resize_frames(frames, (rh, rw), self.interpolation)
        if self.crop == 'center':
            y0, x0 = (rh - th) // 2, (rw - tw) // 2
        else:
            rng = self._generator(results)
            y0, x0 = int(rng.integers(0, rh - th + 1)), int(rng.integers(0, rw - tw + 1))
        results['frames'] = np.ascontiguousarray(frames[:, y0:y0 + th, x0:x0 + tw])
        results['img_shape'] = (th, tw)
        results['crop_bbox'] = (x0, y0, x0 + tw, y0 + th)
        return results

    def __repr__(self):
        return (f'{self.__class__.__name__}(size={self.size}, keep_aspect='
                f'{self.keep_aspect}, crop={self.crop!r}, interpolation='
                f'{self.interpolation!r})')


@TRANSFORMS.register_module()
class RandomHorizontalFlipVideo(_RandomTransform):
    """Mirror all frames of a clip together with probability ``prob``; adds ``flip``."""

    def __init__(self, prob=0.5, seed=None):
        super().__init__(seed)
        self.prob = prob

    def transform(self, results):
        flip = bool(self._generator(results).random() < self.prob)
        if flip:
            results['frames'] = np.ascontiguousarray(results['frames'][:, :, ::-1])
        results['flip'] = flip
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(prob={self.prob})'


# --------------------------------------------------------------------------- #
#                                  Packing                                     #
# --------------------------------------------------------------------------- #
def frames_to_tensor(frames):
    """uint8 ``(T, H, W, 3)`` → FloatTensor ``(3, T, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # (3, T, H, W)
    return x.float().div_(127.5).sub_(1.0).contiguous()


@TRANSFORMS.register_module()
class FramesToTensor(BaseTransform):
    """``frames`` (uint8 (T, H, W, 3)) → ``images`` (float (3, T, H, W) in [-1, 1])."""

    def transform(self, results):
        results['images'] = frames_to_tensor(results.pop('frames'))
        return results


@TRANSFORMS.register_module()
class PackVideoInputs(BaseTransform):
    """Keep what a batch needs: ``images``, ``labels`` and ``caption``.

    Returns ``dict(images=FloatTensor (3, T, H, W) in [-1, 1], labels=int (``label``,
    or -1 when there is none), caption=str ('' when none))``, the item's
    ``sample_idx`` where the dataset gives it, plus ``meta_keys`` copied from
    ``results``; converts ``frames`` first if ``FramesToTensor`` did not.

    Args:
        meta_keys (Sequence[str]): Extra keys to keep, e.g. ``('path', 'clip_fps')``.
    """

    def __init__(self, meta_keys=()):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results):
        images = results['images'] if 'images' in results else frames_to_tensor(
            results['frames'])
        label, caption = results.get('label'), results.get('caption')
        packed = dict(images=images, labels=-1 if label is None else int(label),
                      caption='' if caption is None else str(caption))
        if 'sample_idx' in results:  # (mmengine's BaseDataset's: LossGuardHook names
            packed['sample_idx'] = results['sample_idx']  # an item with NaN inputs by it)
        for key in self.meta_keys:
            packed[key] = results[key]
        return packed

    def __repr__(self):
        return f'{self.__class__.__name__}(meta_keys={self.meta_keys})'

"""Data transforms (mmcv ``BaseTransform`` subclasses registered in ``TRANSFORMS``)."""
from .video import (ClipTooShortError, DecodeFrames, FramesToTensor, LoadVideoInfo,
                    PackVideoInputs, RandomHorizontalFlipVideo, ResizeCropVideo,
                    SampleClipIndices, frames_to_tensor, resize_frames)

__all__ = [
    'ClipTooShortError', 'LoadVideoInfo', 'SampleClipIndices', 'DecodeFrames',
    'ResizeCropVideo', 'RandomHorizontalFlipVideo', 'FramesToTensor', 'PackVideoInputs',
    'frames_to_tensor', 'resize_frames'
]

"""Videos listed in a manifest, decoded and preprocessed on the fly by a pipeline."""
import logging
import os.path as osp

from mmengine.dataset import Compose
from mmengine.logging import print_log
from torch.utils.data import Dataset

from mmsora.registry import DATASETS, TRANSFORMS
from mmsora.utils.video_io import VideoReadError
from .manifest import load_manifest
from .transforms import ClipTooShortError  # (importing registers the video transforms)
from .utils import WorkerRNGMixin, draw_seed

__all__ = ['VideoDataset', 'SKIPPABLE_ERRORS']

# What ``skip_corrupt`` skips: errors that are the video's fault, not the config's.
# Before, a video too short for the clip (ClipTooShortError, raised by
# SampleClipIndices) stopped a skip_corrupt run: only unreadable and missing files
# were listed here, although SkipCorruptDataset (``READ_ERRORS``) skips all three.
SKIPPABLE_ERRORS = (VideoReadError, FileNotFoundError, ClipTooShortError)

# What an unreadable video's error names as the way on (without skip_corrupt): it said
# what was wrong and the training stopped, and its relaunch stopped at the same video.
# (the option ends a clause: a comma after it was copied into the value). Only there:
# SkipCorruptDataset takes it out of the errors it logs while skipping.
SKIP_HINT = ('to skip such videos add --cfg-options train_dataloader.dataset.skip_corrupt=True '
             '(or extract latents first: tools/extract_features.py skips them)')

DEFAULT_PIPELINE = (
    dict(type='SampleClipIndices', num_frames=16, frame_stride=1),
    dict(type='DecodeFrames'),
    dict(type='ResizeCropVideo', size=(256, 256)),
    dict(type='RandomHorizontalFlipVideo'),
    dict(type='PackVideoInputs'),
)


@DATASETS.register_module()
class VideoDataset(WorkerRNGMixin, Dataset):
    """Clips of the videos in a CSV/JSONL manifest (see ``mmsora.datasets.manifest``).

    Each item starts as the manifest row (``path``, ``caption``, ``label``,
    ``num_frames``, ``fps``, ...) plus ``rng``, the dataset's per-process generator
    (see ``WorkerRNGMixin``), and ``sample_idx``; the pipeline turns it into
    ``dict(images=FloatTensor (3, T, H, W) in [-1, 1], labels=int (-1 without a
    label), caption=str)`` (``PackVideoInputs``).

    Args:
        manifest (str): Manifest file, relative to ``data_root`` unless absolute.
        data_root (str): Folder that the manifest and its relative video paths resolve
            against; '' resolves video paths against the manifest's own folder.
        pipeline (Sequence[dict | callable]): Transform configs (``TRANSFORMS``) or
            callables. Defaults to 16 consecutive frames, 256x256 center crop, flip.
        require_caption (bool): Every row must hold a caption. Defaults to False.
        skip_corrupt (bool): On a missing or unreadable video, or one too short for the
            clip (``SKIPPABLE_ERRORS``), log a warning naming the item, count it (once
            per video and process) in ``num_skipped``, and return the next readable
            item instead of raising. Defaults to False.
        seed (int, optional): Seed of the random draws; None draws one from torch's
            global RNG (which mmengine seeds).
    """

    def __init__(self, manifest, data_root='', pipeline=DEFAULT_PIPELINE,
                 require_caption=False, skip_corrupt=False, seed=None):
        self.manifest = osp.join(data_root, manifest)
        require = ('path', 'caption') if require_caption else ('path', )
        self.rows = load_manifest(self.manifest, data_root=data_root or None,
                                  require=require)
        self.pipeline = Compose([TRANSFORMS.build(t) if isinstance(t, dict) else t
                                 for t in pipeline])
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0
        self._bad = set()
        self.seed = draw_seed(seed)
        labels = [r['label'] for r in self.rows if 'label' in r]
        self.metainfo = dict(num_classes=max(labels) + 1 if labels else 0)

    def __len__(self):
        return len(self.rows)

    def load(self, idx):
        """Run the pipeline on row ``idx``; errors name the video and the item, and
        without ``skip_corrupt`` an unreadable video's names the way on (``SKIP_HINT``)."""
        row = self.rows[idx]
        results = dict(row, rng=self.rng, sample_idx=idx)
        try:
            return self.pipeline(results)
        except VideoReadError as e:
            hint = '' if self.skip_corrupt else f'; {SKIP_HINT}'
            raise VideoReadError(e.path, f'{e.reason} (item {idx} of {self.manifest}){hint}') \
                from None
        except FileNotFoundError as e:
            raise FileNotFoundError(f'{e} (item {idx} of {self.manifest})') from None

    def __getitem__(self, idx):
        if not self.skip_corrupt:
            return self.load(idx)
        # The next index replaces a bad item, so the replacement is deterministic.
        for step in range(len(self)):
            j = (idx + step) % len(self)
            if j in self._bad:
                continue
            try:
                return self.load(j)
            except SKIPPABLE_ERRORS as e:
                self._bad.add(j)
                self.num_skipped += 1
                print_log(f'skipping video item {j}: {e} ({self.num_skipped} skipped in '
                          'this process)', logger='current', level=logging.WARNING)
        raise VideoReadError(self.manifest, f'none of its {len(self)} videos is readable')

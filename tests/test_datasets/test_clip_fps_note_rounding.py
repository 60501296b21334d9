"""The note of clips sampled at another frame rate than the samples are written at
takes a config's whole-number rate for the clips' rounded one: our own recipe (25 fps
videos, --frame-stride 3: 8.33 fps clips) with the configs' sample_cfg.fps=8 was noted
at every run. A rate that plays at another speed one sees is still noted."""
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config

from mmsora.datasets import LatentStoreWriter
from mmsora.datasets.store_checks import check_latent_store, note_video_dataset_fps

TWO_CLIPS = 'configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py'
STORE_DEMO = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'


def store_config(repo_root, tmp_path, stride, fps):
    """The video demo trained on a store extracted with --frame-stride ``stride`` from
    a manifest of 25 fps videos, its samples written at ``fps``."""
    manifest = tmp_path / 'clips.csv'
    manifest.write_text('path,fps\na.mp4,25\nb.mp4,25\n')
    root = tmp_path / f'store{stride}'
    writer = LatentStoreWriter(str(root), 1, (3, 4, 16, 16),
                               meta=dict(num_frames=4, frame_stride=stride,
                                         source=str(manifest)))
    writer.write_shard(0, np.zeros((1, 1, 2, 3, 4, 16, 16), np.float32), [0])
    writer.finalize()
    cfg = Config.fromfile(osp.join(repo_root, STORE_DEMO))
    cfg.train_dataloader.dataset = dict(type='PackedLatentDataset', data_root=str(root))
    cfg.model.num_classes = 1
    cfg.sample_cfg.fps = fps
    return cfg


def test_our_recipes_stride_at_the_configs_8_fps_is_not_noted(repo_root, tmp_path, capsys):
    check_latent_store(store_config(repo_root, tmp_path, 3, 8))
    assert 'fps' not in capsys.readouterr().err


def test_a_rate_that_plays_at_another_speed_is_still_noted(repo_root, tmp_path, capsys):
    check_latent_store(store_config(repo_root, tmp_path, 2, 8))
    assert ('the clips were sampled at 12.5 fps (extract_features.py --frame-stride 2) but '
            'sample_cfg.fps is 8: the samples play 0.64x as fast as the training clips; '
            'set sample_cfg.fps=12.5') in capsys.readouterr().err


@pytest.mark.parametrize('stride,fps,noted', [
    (3, 8, False),      # 8.33 rounded: 0.96x
    (2, 12, False),     # 12.5 rounded down: 0.96x
    (2, 13, False),     # and up: 1.04x
    (3, 9, True),       # 8.33 is not 9's
    (3, 8.1, True),     # a fraction is a rate meant as given: 2% alone
    (18, 1, True),      # 1.39 rounds to 1, but plays 0.72x
    (8, 3.125, False),  # the exact rate, as ever
])
def test_clips_decoded_in_training(repo_root, tmp_path, capsys, stride, fps, noted):
    """The same rule for a VideoDataset (clips decoded during training)."""
    (tmp_path / 'captions.csv').write_text('path,caption,fps\na.mp4,a,25\nb.mp4,b,25\n')
    cfg = Config.fromfile(osp.join(repo_root, TWO_CLIPS))
    cfg.train_dataloader.dataset.data_root = str(tmp_path)
    sampler = next(t for t in cfg.train_dataloader.dataset.pipeline
                   if t['type'] == 'SampleClipIndices')
    sampler.frame_stride = stride
    cfg.sample_cfg.fps = fps
    note_video_dataset_fps(cfg)
    err = capsys.readouterr().err
    assert (f'(SampleClipIndices frame_stride={stride}) but sample_cfg.fps is {fps:g}'
            in err) == noted, err

"""An unreadable video read on the fly stops tools/train.py with one line that names the
way on: the option it gives, added to the same command, trains past the video (it
named only the video, and the relaunch stopped at the same one)."""
import os.path as osp
import re

import numpy as np
import pytest
from mmengine.logging import MMLogger

from mmsora.datasets import SkipCorruptDataset
from mmsora.datasets.manifest import write_manifest
from mmsora.datasets.video_dataset import VideoDataset
from mmsora.utils.cli import run_cli
from mmsora.utils.video_io import VideoReadError, write_video
from tests.tiny_data import logged_messages
from tools import train

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')

DEMO = 'configs/video_dit/video_dit_tiny4_1xb1_overfit_bikes.py'
PIPELINE = [dict(type='SampleClipIndices', num_frames=4, frame_stride=1, mode='center'),
            dict(type='DecodeFrames'),
            dict(type='ResizeCropVideo', size=16, crop='center'),
            dict(type='PackVideoInputs')]


def videos(tmp_path):
    """A manifest of a readable 8-frame clip (item 0) and a damaged file (item 1)."""
    frames = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    write_video(str(tmp_path / 'good.mp4'), frames, fps=8)
    (tmp_path / 'damaged.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42 cut short')
    write_manifest([dict(path=str(tmp_path / 'good.mp4')),
                    dict(path=str(tmp_path / 'damaged.mp4'))],
                   str(tmp_path / 'train.csv'), relative_to=str(tmp_path))
    return str(tmp_path / 'train.csv')


def test_the_error_names_skip_corrupt_once(tmp_path):
    manifest = videos(tmp_path)
    with pytest.raises(VideoReadError) as info:
        VideoDataset(manifest, pipeline=PIPELINE, seed=0)[1]
    said = str(info.value)
    assert said.startswith(f"cannot read video '{tmp_path}/damaged.mp4': "), said
    assert said.endswith(f'(item 1 of {manifest}); to skip such videos add --cfg-options '
                         'train_dataloader.dataset.skip_corrupt=True (or extract latents '
                         'first: tools/extract_features.py skips them)'), said
    # skipping, it is a warning about a video skipped: no advice to skip it
    skipping = VideoDataset(manifest, pipeline=PIPELINE, seed=0, skip_corrupt=True)
    with pytest.raises(VideoReadError) as info:
        skipping.load(1)
    assert 'skip_corrupt' not in str(info.value)


def test_skip_corrupt_dataset_logs_no_advice_to_skip(tmp_path):
    """SkipCorruptDataset around a VideoDataset: its warning for a video it skips said
    'to skip such videos add --cfg-options train_dataloader.dataset.skip_corrupt=True'
    (skipping already, and a key path that is not the wrapped dataset's), and so did its
    error at more than max_skipped. The advice is for the error that ends a run."""
    manifest = videos(tmp_path)
    with logged_messages(MMLogger.get_current_instance()) as logged:
        dataset = SkipCorruptDataset(VideoDataset(manifest, pipeline=PIPELINE, seed=0))
        assert dataset[1]['sample_idx'] == 0 and dataset.num_skipped == 1
        strict = SkipCorruptDataset(VideoDataset(manifest, pipeline=PIPELINE, seed=0),
                                    max_skipped=0)
        with pytest.raises(ValueError) as info:
            strict[1]
    skipped = [m for m in logged if m.startswith('skipping unreadable item 1: ')]
    assert len(skipped) == 1, logged
    assert f"cannot read video '{tmp_path}/damaged.mp4': " in skipped[0], skipped
    assert skipped[0].endswith(f'(item 1 of {manifest}) (1 skipped in this process)'), \
        skipped
    said = str(info.value)
    assert said.startswith('more than max_skipped=0 unreadable items; the last: cannot '
                           'read video'), said
    assert said.endswith(f'(item 1 of {manifest})'), said
    for message in skipped + [said]:
        assert '--cfg-options' not in message and 'to skip such' not in message, message


def test_train_goes_on_with_the_option_the_error_names(repo_root, tmp_path, capsys):
    videos(tmp_path)
    config = tmp_path / 'tiny_video.py'
    config.write_text(
        f'_base_ = [{osp.join(repo_root, DEMO)!r}]\n'
        'model = dict(denoiser=dict(input_size=16, hidden_size=32, depth=2, num_heads=2,\n'
        '                           num_frames=4), latent_shape=(3, 4, 16, 16))\n'
        f'train_dataloader = dict(dataset=dict(data_root={str(tmp_path)!r},\n'
        f'                                     manifest="train.csv",\n'
        f'                                     pipeline={PIPELINE!r}))\n'
        'train_cfg = dict(max_iters=2)\n'
        'param_scheduler = []\n')

    def main(work, *options):
        return run_cli(lambda: train.main([str(config), '--work-dir', str(tmp_path / work),
                                           *options]))
    assert main('w') == 2  # iteration 2 reads item 1
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('error: cannot read video')]
    assert len(errors) == 1 and errors[0].count('skip_corrupt') == 1, errors
    option = re.search(r'--cfg-options \S+', errors[0])
    assert option, errors[0]  # the way on, as the line gives it
    assert main('w2', *option.group().split()) == 0
    out = capsys.readouterr()
    assert 'skipping video item 1: ' in out.out + out.err
    assert 'error:' not in out.err

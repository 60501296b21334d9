"""SampleVisualizationHook: samples reach the visualizer (a filmstrip PNG) and mp4s
are written for clips; training is unchanged by it (RNG states restored)."""
import glob
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.runner import Runner

import mmsora.datasets  # noqa: F401
import mmsora.engine  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.engine.hooks import filmstrip
from mmsora.utils.video_io import probe_video
from tools.train import build_train_config, parse_args

DEMO = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
TINY = [
    'model.denoiser.hidden_size=32', 'model.denoiser.depth=2', 'model.denoiser.num_heads=2',
    'model.denoiser.input_size=8', 'model.latent_shape=[3,4,8,8]',
    'train_dataloader.dataset.size=8', 'train_dataloader.dataset.num_samples=16',
    'train_dataloader.batch_size=2', 'default_hooks.logger.interval=1', 'param_scheduler=[]',
    'train_cfg.max_iters=4', 'sample_cfg.num_steps=2',
]


def run(repo_root, work_dir, hook=None):
    cfg = build_train_config(parse_args([osp.join(repo_root, DEMO), '--work-dir',
                                         str(work_dir), '--cfg-options', *TINY]))
    if hook:
        cfg.custom_hooks = list(cfg.custom_hooks) + [hook]
    cfg.experiment_name = osp.basename(str(work_dir))
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def test_clips_are_logged_and_training_is_unchanged(repo_root, tmp_path):
    hook = dict(type='SampleVisualizationHook', interval=2, num_samples=3, labels=[1, 2],
                gif=True)
    runner = run(repo_root, tmp_path / 'with', hook)
    plain = run(repo_root, tmp_path / 'plain')
    with_losses = runner.message_hub.get_scalar('train/loss').data[0]
    assert list(with_losses) == list(plain.message_hub.get_scalar('train/loss').data[0])

    # The filmstrips through LocalVisBackend: 3 clips x 4 frames of 8x8, 2 px padding.
    pngs = sorted(glob.glob(str(tmp_path / 'with' / '*' / 'vis_data' / 'vis_image' / '*.png')))
    assert [osp.basename(p) for p in pngs] == ['samples_2.png', 'samples_4.png']
    from PIL import Image
    assert Image.open(pngs[0]).size == (4 * 10 + 2, 3 * 10 + 2)
    # And the clips as mp4 + gif, named by label; interval 2 of 4 iters: rounds 2 and 4.
    for step in (2, 4):
        folder = osp.join(runner.log_dir, 'samples', f'iter_{step}')
        names = sorted(osp.basename(p) for p in glob.glob(osp.join(folder, '*')))
        assert names == ['sample_000_label1.gif', 'sample_000_label1.mp4',
                         'sample_001_label2.gif', 'sample_001_label2.mp4',
                         'sample_002_label1.gif', 'sample_002_label1.mp4']
        info = probe_video(osp.join(folder, 'sample_000_label1.mp4'))
        assert info['num_frames'] == 4 and info['fps'] == pytest.approx(4)


def test_filmstrip_layouts_and_errors():
    pics = torch.linspace(-1, 1, 5 * 3 * 4 * 4).view(5, 3, 4, 4)
    grid = filmstrip(pics, nrow=2)  # 3 rows of 2, the last tile blank
    assert grid.shape == (3 * 6 + 2, 2 * 6 + 2, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[2:6, 2:6], ((pics[0].permute(1, 2, 0) + 1) * 127.5)
                                  .round().to(torch.uint8).numpy())
    assert grid[14:18, 8:12].max() == 0
    clips = torch.zeros(2, 3, 5, 4, 4)
    clips[1, :, 3] = 1  # clip 1, frame 3 white
    strip = filmstrip(clips)
    assert strip.shape == (2 * 6 + 2, 5 * 6 + 2, 3)
    assert strip[8:12, 2 + 3 * 6:2 + 3 * 6 + 4].min() == 255
    with pytest.raises(ValueError, match='expected'):
        filmstrip(torch.zeros(3, 4))


def test_text_model_needs_prompts():
    from mmsora.engine.hooks import SampleVisualizationHook
    hook = SampleVisualizationHook(interval=1)

    class TextModel:
        text_conditioned = True
    with pytest.raises(ValueError, match='give prompts'):
        hook._conditions(TextModel())
    with pytest.raises(ValueError, match='interval >= 1'):
        SampleVisualizationHook(interval=0)


def test_the_text_encoder_leaves_the_gpu_after_the_samples(monkeypatch, tmp_path):
    """The samples drawn during training left the text encoder (T5-XXL: 9.5 GB in
    bf16) on rank 0's card for the rest of the run (walk-through q)."""
    from types import SimpleNamespace
    from unittest import mock

    from mmsora.engine.hooks import SampleVisualizationHook
    from mmsora.models import HFTextEncoder
    from mmsora.utils.tiny_checkpoints import make_tiny_text_encoder
    encoder = HFTextEncoder(make_tiny_text_encoder(str(tmp_path / 't5'), 't5'))
    assert not encoder.offload()  # not loaded: nothing to move
    encoder.encode(['a cat'])
    assert not encoder.offload()  # on the CPU already
    on_gpu = mock.MagicMock()
    on_gpu.parameters.side_effect = lambda: iter([SimpleNamespace(
        device=torch.device('cuda', 0))])
    encoder.__dict__['_encoder'] = on_gpu
    assert encoder.offload()
    on_gpu.to.assert_called_once_with('cpu')
    # the hook offloads after drawing, and empties the CUDA cache then
    hook = SampleVisualizationHook(interval=1, prompts=['a cat'], num_samples=1)
    model = SimpleNamespace(text_conditioned=True, text_encoder=mock.MagicMock(),
                            training=True, eval=lambda: None, train=lambda mode: None)
    model.text_encoder.offload.return_value = True
    runner = SimpleNamespace(cfg=dict(sample_cfg={}))
    monkeypatch.setattr('mmsora.apis.sample_images', lambda *a, **k: torch.zeros(1, 3, 2, 2))
    with mock.patch('torch.cuda.empty_cache') as empty:
        hook._draw(runner, model)
    model.text_encoder.offload.assert_called_once_with()
    empty.assert_called_once_with()


def test_a_sampler_that_makes_nan_is_a_warning(repo_root, tmp_path, monkeypatch):
    """A scheduler step that turns finite inputs into NaN is refused
    (SamplerStepError): in the hook it is a warning and training goes on (it ended the
    run at its first sample hook)."""
    from mmsora.diffusion import gaussian
    from mmsora.diffusion.scheduler_sampling import SamplerStepError

    def fails(*args, **kwargs):
        raise SamplerStepError('sampler EulerAncestralDiscreteScheduler with 4 steps '
                               'turned finite inputs into NaN or inf at step 1 of 4')
    monkeypatch.setattr(gaussian, 'scheduler_sample_loop', fails)
    hook = dict(type='SampleVisualizationHook', interval=2, num_samples=2, labels=[1],
                sample_cfg=dict(sampler='EulerAncestralDiscreteScheduler', num_steps=4))
    runner = run(repo_root, tmp_path / 'nan', hook)
    assert runner.iter == 4
    log = open(glob.glob(str(tmp_path / 'nan' / '*' / '*.log'))[0]).read()
    assert 'Iter(sample) [2] no samples: sampler EulerAncestralDiscreteScheduler' in log

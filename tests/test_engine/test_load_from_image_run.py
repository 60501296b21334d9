"""--load-from an mmsora image-DiT run into a video config inflates the image DiT
strictly (not mmengine's non-strict loader, which would skip the mismatched keys)."""
import glob
import os
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

import mmsora.datasets  # noqa: F401
import mmsora.engine  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.utils.cli import UserError
from tests.runner_probes import StateAtTrainStart
from tools.train import build_train_config, parse_args

IMAGE = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
VIDEO = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
COMMON = ['model.denoiser.hidden_size=32', 'model.denoiser.num_heads=2',
          'model.denoiser.input_size=8', 'train_dataloader.dataset.size=8',
          'train_dataloader.dataset.num_samples=16', 'train_dataloader.batch_size=2',
          'param_scheduler=[]']


def config(repo_root, path, work_dir, *options, load_from=None):
    argv = [osp.join(repo_root, path), '--work-dir', str(work_dir), '--cfg-options',
            *COMMON, *options] + (['--load-from', load_from] if load_from else [])
    cfg = build_train_config(parse_args(argv))
    cfg.experiment_name = osp.basename(str(work_dir))
    return cfg


def test_image_run_inflates_into_video_dit(repo_root, tmp_path):
    image = Runner.from_cfg(config(repo_root, IMAGE, tmp_path / 'image', 'train_cfg.max_iters=2',
                                   'model.denoiser.depth=2', 'model.latent_shape=[3,8,8]',
                                   'default_hooks.checkpoint.interval=2'))
    image.train()
    ckpt = glob.glob(str(tmp_path / 'image' / 'iter_2.pth'))[0]

    # Latte depth 4 = 2 spatial blocks, one per image block.
    # The video demo predicts x_0 with a fixed sigma; the image run learned sigma, so
    # the video model takes the image DiT's output layer (learn_sigma=True).
    sigma = ['model.denoiser.learn_sigma=True', 'model.diffusion.learn_sigma=True',
             'model.diffusion.predict_xstart=False']
    cfg = config(repo_root, VIDEO, tmp_path / 'video', 'train_cfg.max_iters=1',
                 'model.denoiser.depth=4', 'model.latent_shape=[3,4,8,8]', *sigma,
                 load_from=ckpt)
    assert cfg.load_from is None and cfg.model.pretrained_denoiser == ckpt
    video = Runner.from_cfg(cfg)
    video._init_model_weights()
    # The checkpoint's state_dict holds the EMA weights; they are what is inflated.
    state = torch.load(ckpt, weights_only=False)['state_dict']
    vid = video.model.denoiser
    torch.testing.assert_close(vid.blocks[0].attn.qkv.weight,
                               state['denoiser.blocks.0.attn.qkv.weight'])
    torch.testing.assert_close(vid.blocks[2].mlp.fc1.weight,
                               state['denoiser.blocks.1.mlp.fc1.weight'])
    torch.testing.assert_close(vid.y_embedder.embedding_table.weight,
                               state['denoiser.y_embedder.embedding_table.weight'])
    log = open(glob.glob(str(tmp_path / 'video' / '*' / '*.log'))[0]).read()
    assert f'pretrained_denoiser: inflated the image DiT {ckpt} into VideoDiT' in log

    # A video config whose spatial blocks or output layer do not match the image run
    # is refused before the Runner (it was after about 240 lines of start-up, with a
    # work dir made)
    with pytest.raises(UserError, match=rf'^--load-from {ckpt}: the DiT has 2 blocks but '
                                        r'the latte VideoDiT has 1 spatial blocks'):
        config(repo_root, VIDEO, tmp_path / 'bad', 'train_cfg.max_iters=1',
               'model.denoiser.depth=2', 'model.latent_shape=[3,4,8,8]', *sigma,
               load_from=ckpt)
    with pytest.raises(UserError, match=rf'^--load-from {ckpt}: cannot inflate the image DiT: '
                                        r'.*learn_sigma \(and in_channels\) must match'):
        config(repo_root, VIDEO, tmp_path / 'bad', 'train_cfg.max_iters=1',
               'model.denoiser.depth=4', 'model.latent_shape=[3,4,8,8]', load_from=ckpt)
    assert not os.path.exists(tmp_path / 'bad')


def test_video_run_loads_through_mmengine(repo_root, tmp_path):
    src = Runner.from_cfg(config(repo_root, VIDEO, tmp_path / 'src', 'train_cfg.max_iters=1',
                                 'model.denoiser.depth=2', 'model.latent_shape=[3,4,8,8]',
                                 'default_hooks.checkpoint.interval=1'))
    src.train()
    cfg = config(repo_root, VIDEO, tmp_path / 'dst', 'train_cfg.max_iters=1',
                 'model.denoiser.depth=2',
                 'model.latent_shape=[3,4,8,8]', load_from=str(tmp_path / 'src' / 'iter_1.pth'))
    assert cfg.load_from == str(tmp_path / 'src' / 'iter_1.pth')
    assert not cfg.model.get('pretrained_denoiser')
    dst = Runner.from_cfg(cfg)
    start = StateAtTrainStart()
    dst.register_hook(start)
    dst.train()
    saved = torch.load(cfg.load_from, weights_only=False)['state_dict']
    assert saved.keys() == start.weights.keys()
    start.assert_weights(saved)

    # The same video run's weights through model.pretrained_denoiser (what --deepspeed
    # runs are pointed to) load as they are: they were taken for an image DiT to
    # inflate ('the DiT has 2 blocks but the latte VideoDiT has 1 spatial blocks').
    options = ['train_cfg.max_iters=1', 'model.denoiser.depth=2',
               'model.latent_shape=[3,4,8,8]']
    cfg = config(repo_root, VIDEO, tmp_path / 'pre', *options,
                 f'model.pretrained_denoiser={tmp_path / "src" / "iter_1.pth"}')
    pre = Runner.from_cfg(cfg)
    pre._init_model_weights()
    for key, value in pre.model.denoiser.state_dict().items():
        torch.testing.assert_close(value, saved[f'denoiser.{key}'], rtol=0, atol=0)
    log = open(glob.glob(str(tmp_path / 'pre' / '*' / '*.log'))[0]).read()
    assert 'pretrained_denoiser: loaded the video model' in log
    # and a video model of other widths is named in one line
    cfg = config(repo_root, VIDEO, tmp_path / 'wide', *options, 'model.denoiser.hidden_size=64',
                 f'model.pretrained_denoiser={tmp_path / "src" / "iter_1.pth"}')
    with pytest.raises(ValueError, match=r"its weights are not this model's: \d+ of another "
                                         r'shape \(e\.g\. '):
        Runner.from_cfg(cfg)._init_model_weights()

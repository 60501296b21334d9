"""Stable Cascade video end to end on CPU: tools/train.py -> tools/infer.py -> mp4.

tools/make_tiny_stable_cascade.py makes the folders the tiny config reads; the config
trains a tiny StableCascadeVideo on a toy packed latent store (two 4-frame Stage C
clips, each with tiny-CLIP text embeddings); tools/infer.py then samples
from prompts with guidance (DDPMWuerstchenScheduler) and decodes each clip through a
tiny Stage B + Stage A read from a local folder, one mp4 per prompt. Also: every
stable_cascade config builds, and the lite one is the released prior + temporal layers.
"""
import glob
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.models.denoisers.stable_cascade_video import STAGE_C_LITE
from mmsora.registry import DATASETS, DIFFUSION, MODELS
from mmsora.utils.cli import UserError
from mmsora.utils.video_io import read_video_frames
from tests.launch import run_tool

CONFIG = 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py'
LITE = 'configs/stable_cascade/stable_cascade_video_lite_1xb1_100k_clips1024.py'
CAPTIONS = ['a red disk', 'a blue ring']


def test_configs_build(repo_root):
    for path in sorted(glob.glob(osp.join(repo_root, 'configs/stable_cascade/*.py'))):
        cfg = Config.fromfile(path)
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
        c, frames, h, w = cfg.model.latent_shape
        assert c == model.denoiser.in_channels and frames >= 1
        assert DIFFUSION.get(cfg.model.diffusion.type) is not None
        assert DATASETS.get(cfg.train_dataloader.dataset.type) is not None
        assert cfg.sample_cfg.sampler in DIFFUSION.build(cfg.model.diffusion).samplers()
    cfg = Config.fromfile(osp.join(repo_root, LITE))
    assert cfg.model.denoiser.unet.to_dict() == STAGE_C_LITE  # the released prior_lite
    with torch.device('meta'):
        denoiser = MODELS.build(cfg.model.denoiser)
    spatial = sum(p.numel() for p in denoiser.unet.parameters())
    trainable = sum(p.numel() for p in denoiser.parameters() if p.requires_grad)
    assert abs(spatial - 1.03e9) < 0.01e9 and abs(trainable - 302e6) < 1e6


def run(args, repo_root):
    """A script of the repository (``args[0]``) run by this interpreter; it must pass."""
    out = run_tool([sys.executable, *args], repo_root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_train_sample_mp4(repo_root, tmp_path):
    # The folders the config reads, made by the tool a user runs first, moved here.
    folders = [f'model.text_encoder.pretrained_path={tmp_path / "clip"}',
               f'model.vae.pretrained_path={tmp_path / "stable-cascade"}',
               f'train_dataloader.dataset.data_root={tmp_path / "store"}']
    out = run(['tools/make_tiny_stable_cascade.py', '--cfg-options', *folders], repo_root)
    assert out.stdout.count('wrote ') == 3, out.stdout
    again = subprocess.run([sys.executable, 'tools/make_tiny_stable_cascade.py',
                            '--cfg-options', *folders], cwd=repo_root, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 2 and 'already exist(s); --force replaces them' in again.stderr
    from tools.make_tiny_stable_cascade import main
    with pytest.raises(UserError, match='not a Stable Cascade config'):
        main([osp.join(repo_root, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')])
    work = tmp_path / 'work'
    run(['tools/train.py', CONFIG, '--work-dir', str(work), '--cfg-options', *folders],
        repo_root)
    scalars = glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))[0]
    losses = [json.loads(line)['loss'] for line in open(scalars) if '"loss"' in line]
    assert len(losses) >= 6 and np.mean(losses[-2:]) < 0.8 * losses[0], losses

    out = run(['tools/infer.py', str(work), '--prompt', *CAPTIONS, '--out',
               str(tmp_path / 'clips') + '/', '--steps', '4', '--cfg-scale', '2'], repo_root)
    videos = sorted(glob.glob(str(tmp_path / 'clips' / '*.mp4')))
    assert len(videos) == 2, out.stdout + out.stderr
    for path in videos:
        frames = read_video_frames(path)
        assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8

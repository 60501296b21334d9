"""Stable Cascade video end to end on CPU: tools/train.py -> tools/infer.py -> mp4.

The tiny config trains a tiny StableCascadeVideo on a toy packed latent store (two
4-frame Stage C clips, each with tiny-CLIP text embeddings); tools/infer.py then samples
from prompts with guidance (DDPMWuerstchenScheduler) and decodes each clip through a
tiny Stage B + Stage A read from a local folder, one mp4 per prompt. Also: every
stable_cascade config builds, and the lite one is the released prior + temporal layers.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import torch
from diffusers import DDPMWuerstchenScheduler
from diffusers.models.unets.unet_stable_cascade import StableCascadeUNet
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
from mmengine.config import Config

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.datasets.latent_store import LatentStoreWriter
from mmsora.models.denoisers.stable_cascade_video import STAGE_C_LITE
from mmsora.registry import DATASETS, DIFFUSION, MODELS
from mmsora.utils.video_io import read_video_frames
from tests.test_models.test_stable_cascade_decoder import TINY_STAGE_A, TINY_STAGE_B
from tests.tiny_models import make_tiny_text_encoder

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


def write_toy_store(root, clip_path):
    """Two 4-frame Stage C clips (a blob moving right / down) with their captions."""
    from mmsora.models.text_encoders import HFTextEncoder
    embeds, mask, pooled = HFTextEncoder(clip_path, kind='clip_with_projection',
                                         hidden_layer=-1, max_length=8).encode(CAPTIONS)
    clips = np.zeros((2, 16, 4, 4, 4), np.float32)
    for f in range(4):
        clips[0, :8, f, 1, f] = 1.5     # moves right
        clips[1, 8:, f, f, 2] = -1.5    # moves down
    writer = LatentStoreWriter(root, num_source_items=2, latent_shape=clips.shape[1:],
                               dtype='float32', content='samples', scale_factor=1.0,
                               text_shape=tuple(embeds.shape[1:]),
                               pooled_dim=pooled.shape[1])
    writer.write_shard(0, clips[:, None, None], [0, 0], text=dict(
        text_embeds=embeds, text_mask=mask, pooled_text_embeds=pooled))
    writer.finalize()


def write_tiny_decoder(root):
    torch.manual_seed(0)
    StableCascadeUNet(**dict(TINY_STAGE_B, effnet_in_channels=16,
                             clip_text_pooled_in_channels=16)).save_pretrained(
        osp.join(root, 'decoder_lite'))
    PaellaVQModel(**TINY_STAGE_A).save_pretrained(osp.join(root, 'vqgan'))
    DDPMWuerstchenScheduler().save_pretrained(osp.join(root, 'scheduler'))


def run(args, repo_root):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    out = subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_train_sample_mp4(repo_root, tmp_path):
    clip = make_tiny_text_encoder(str(tmp_path / 'clip'), 'clip_with_projection', width=32)
    write_toy_store(str(tmp_path / 'store'), clip)
    write_tiny_decoder(str(tmp_path / 'stable-cascade'))
    config = tmp_path / 'tiny.py'
    config.write_text(
        f'_base_ = [{osp.join(repo_root, CONFIG)!r}]\n'
        f'model = dict(vae=dict(pretrained_path={str(tmp_path / "stable-cascade")!r}),\n'
        f'             text_encoder=dict(pretrained_path={clip!r}))\n'
        f'train_dataloader = dict(dataset=dict(data_root={str(tmp_path / "store")!r}))\n')
    work = tmp_path / 'work'
    run(['tools/train.py', str(config), '--work-dir', str(work)], repo_root)
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

"""configs/sit/: the SiT-XL/2 paper recipe, the rectified-flow video config and the
demo build the objectives they claim (tests/test_configs.py builds every config)."""
import os.path as osp

import torch
from mmengine.config import Config

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load(name):
    cfg = Config.fromfile(osp.join(ROOT, 'configs/sit', name))
    with torch.device('meta'):
        return cfg, MODELS.build(cfg.model)


def test_sit_xl2_is_the_paper_recipe():
    cfg, model = load('sit_xl2_8xb32_400k_imagenet256.py')
    params = sum(p.numel() for p in model.denoiser.parameters() if p.requires_grad)
    assert abs(params - 675e6) / 675e6 < 0.01  # SiT-XL/2 = DiT-XL/2's 675M
    t = model.diffusion
    assert (t.path_name, t.prediction, t.loss_weight, t.time_dist) == (
        'Linear', 'velocity', None, 'uniform')
    assert (t.train_eps, t.sample_eps, t.timestep_convention) == (0, 0, 'sit')
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, weight_decay=0.0,
                                               betas=(0.9, 0.999))
    assert cfg.train_dataloader.batch_size * 8 == 256
    ema = [h for h in cfg.custom_hooks if h.type == 'EMAHook'][0]
    assert ema.momentum == 1e-4
    assert cfg.sample_cfg == dict(sampler='sde_euler', num_steps=250, cfg_scale=4.0)


def test_video_config_is_rectified_flow_on_video_dit():
    cfg, model = load('video_dit_xl2_rflow_8xb5_1m_ucf101.py')
    assert type(model.denoiser).__name__ == 'VideoDiT' and not model.denoiser.learn_sigma
    t = model.diffusion
    assert (t.path_name, t.prediction, t.time_dist, t.timestep_convention) == (
        'Linear', 'velocity', 'logit_normal', 'dit')
    assert cfg.sample_cfg.sampler in t.samplers()


def test_demo_config_samples_with_a_transport_sampler():
    cfg, model = load('sit_tiny2_1xb32_1500_shapes16.py')
    assert type(model.diffusion).__name__ == 'Transport' and not model.denoiser.learn_sigma
    assert cfg.sample_cfg.sampler in model.diffusion.samplers()

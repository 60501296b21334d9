"""diffusers' schedulers registered in NOISE_SCHEDULERS with DiT's training schedule."""
import inspect

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from mmsora.diffusion import GaussianDiffusion, build_noise_scheduler, dit_scheduler_config
from mmsora.registry import NOISE_SCHEDULERS

NAMES = [
    'DDPMScheduler', 'DDIMScheduler', 'DPMSolverMultistepScheduler',
    'EulerDiscreteScheduler', 'EulerAncestralDiscreteScheduler', 'UniPCMultistepScheduler',
    'FlowMatchEulerDiscreteScheduler'
]


def test_registered_names():
    assert set(NAMES) <= set(NOISE_SCHEDULERS.module_dict)
    assert NOISE_SCHEDULERS.get('DDPMScheduler') is DDPMScheduler


@pytest.mark.parametrize('name', NAMES)
def test_build_set_timesteps_and_step(name):
    cfg = dict(type=name, **dit_scheduler_config(scheduler=name))
    scheduler = NOISE_SCHEDULERS.build(cfg)
    assert type(scheduler).__name__ == name
    if name != 'FlowMatchEulerDiscreteScheduler':
        # Same betas as the Gaussian diffusion DiT is trained with.
        np.testing.assert_allclose(scheduler.betas.double().numpy(),
                                   GaussianDiffusion().betas, atol=1e-7)
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) == 10
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 4, 4) * getattr(scheduler, 'init_noise_sigma', 1.0)
    takes_generator = 'generator' in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps[:3]:
        if hasattr(scheduler, 'scale_model_input'):  # what the model would be fed
            assert scheduler.scale_model_input(sample, t).shape == sample.shape
        eps = torch.randn_like(sample)  # stands for the epsilon half of a DiT output
        kwargs = dict(generator=torch.Generator().manual_seed(0)) if takes_generator else {}
        sample = scheduler.step(eps, t, sample, **kwargs).prev_sample
    assert sample.shape == (2, 4, 4, 4) and torch.isfinite(sample).all()


def test_dit_scheduler_config():
    cfg = dit_scheduler_config()
    assert cfg['beta_schedule'] == 'linear' and cfg['prediction_type'] == 'epsilon'
    assert cfg['beta_start'] == 1e-4 and cfg['beta_end'] == 0.02
    assert cfg['clip_sample'] is False
    # Other step counts rescale the range like DiT's named linear schedule.
    for short in (build_noise_scheduler('DDPMScheduler', num_train_timesteps=500),
                  NOISE_SCHEDULERS.build(
                      dict(type='DDPMScheduler', **dit_scheduler_config(500, 'DDPMScheduler')))):
        np.testing.assert_allclose(short.betas.double().numpy(),
                                   GaussianDiffusion(num_timesteps=500).betas, atol=1e-7)
    assert dit_scheduler_config(scheduler=FlowMatchEulerDiscreteScheduler) == dict(
        num_train_timesteps=1000)


def test_build_noise_scheduler():
    sched = build_noise_scheduler('DDPMScheduler', variance_type='learned_range')
    assert sched.config.variance_type == 'learned_range' and not sched.config.clip_sample
    # A learned-sigma DiT output (2C channels) goes to DDPM as a whole.
    sched.set_timesteps(5)
    out = torch.randn(1, 8, 4, 4)
    prev = sched.step(out, sched.timesteps[0], torch.randn(1, 4, 4, 4)).prev_sample
    assert prev.shape == (1, 4, 4, 4)
    # A dict config is taken as written.
    sched = build_noise_scheduler(dict(type='DDIMScheduler', beta_schedule='scaled_linear'),
                                  steps_offset=1)
    assert sched.config.beta_schedule == 'scaled_linear' and sched.config.steps_offset == 1


def test_sample_cfg_merges_by_one_rule():
    """merge_sample_cfg: a config's sample_cfg under a hook's / the evaluation's / a
    tool's choices; another sampler drops the options of the one before (DDIM's eta
    was handed to DDPM: 'takes no option eta'), settings and fps stay; None is not a
    choice, but an option's None value given in a dict is kept."""
    from mmsora.diffusion.scheduler_sampling import merge_sample_cfg
    base = dict(sampler='ddim', num_steps=50, eta=0.5, cfg_scale=4.0, fps=8)
    assert merge_sample_cfg(base, dict(sampler='ddpm')) == dict(
        sampler='ddpm', num_steps=50, cfg_scale=4.0, fps=8)
    assert merge_sample_cfg(base, dict(num_steps=10)) == dict(base, num_steps=10)
    assert merge_sample_cfg(base, None, sampler=None, num_steps=None, eta=0.0) == \
        dict(base, eta=0.0)
    assert merge_sample_cfg(None, dict(sampler='sde_euler'), dict(last_step=None),
                            num_steps=20) == dict(sampler='sde_euler', last_step=None,
                                                  num_steps=20)
    assert merge_sample_cfg(base, dict(sampler='ddpm', eta=1.0)) == dict(
        sampler='ddpm', num_steps=50, cfg_scale=4.0, fps=8, eta=1.0)


def test_a_hook_with_another_sampler_than_the_config_is_not_refused():
    """A sampling hook (or the evaluation) choosing DDPM under a config's DDIM with
    its eta was refused before training ('sampler ddpm takes no option eta')."""
    import os.path as osp

    from mmsora.utils.config_loading import load_config
    from mmsora.utils.config_keys import check_training_keys
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = load_config(osp.join(root, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'))
    cfg.sample_cfg = dict(sampler='ddim', num_steps=10, eta=0.5)
    cfg.custom_hooks.append(dict(type='SampleVisualizationHook', interval=100,
                                 sample_cfg=dict(sampler='ddpm')))
    check_training_keys(cfg)

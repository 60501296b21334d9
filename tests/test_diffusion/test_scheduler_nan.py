"""A diffusers scheduler's steps and NaN: 4 Euler-ancestral steps on the demos' cosine
schedule (squaredcos_cap_v2) sampled all-NaN without a word (sigma 2e4 then 1.75: the
float32 noise split sigma_down = sqrt(sigma_to^2 - sigma_up^2) took the root of a
negative number), and tools/infer.py blamed the weights. The ancestral steps now run on
float64 sigmas; a step that still makes NaN or inf from finite inputs is refused in one
line naming the sampler, the steps and the schedule."""
import os.path as osp

import pytest
import torch

from mmsora.apis import init_model
from mmsora.apis.inference import sample_images
from mmsora.diffusion import scheduler_sampling
from mmsora.diffusion.scheduler_sampling import SamplerStepError, scheduler_sample_loop
from mmsora.diffusion.schedulers import build_noise_scheduler
from tests.tiny_models import DEMO, TINY_DEMO_OPTIONS

VIDEO_DEMO = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
VIDEO_OPTIONS = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
                 'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
                 'model.latent_shape=[3,4,8,8]']
IMAGE_OPTIONS = [o for o in TINY_DEMO_OPTIONS if o.startswith('model.')]
EULER_A = 'EulerAncestralDiscreteScheduler'


@pytest.fixture(scope='module')
def image_model():
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    model, _ = init_model(osp.join(root, DEMO), checkpoint=False,
                          cfg_options=IMAGE_OPTIONS)
    return model


@pytest.mark.parametrize('config,options', [(DEMO, IMAGE_OPTIONS),
                                            (VIDEO_DEMO, VIDEO_OPTIONS)])
def test_four_euler_ancestral_steps_on_the_cosine_schedule_sample(repo_root, config, options):
    model, _ = init_model(osp.join(repo_root, config), checkpoint=False, cfg_options=options)
    x = sample_images(model, [0, 1, 2], seeds=0, sampler=EULER_A, num_steps=4)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_the_first_step_splits_its_noise_as_in_closed_form():
    # one step from sigma 2e4 to 1.75 of a zero-epsilon model: x0 = x, and the sample
    # goes to x + (x - x0) / sigma * (sigma_down - sigma) + sigma_up * noise = x +
    # sigma_up * noise, sigma_up^2 = sigma_to^2 (1 - sigma_to^2 / sigma_from^2)
    scheduler = build_noise_scheduler(EULER_A, beta_schedule='squaredcos_cap_v2')
    scheduler.set_timesteps(4)
    s_from, s_to = (float(s) for s in scheduler.sigmas[:2])  # (float32 values, exact)
    sigma_up = (s_to**2 * (1 - s_to**2 / s_from**2)) ** 0.5
    steps, step = [], scheduler.step

    def recorded(out, t, sample):  # each step's input and output, its noise seeded
        result = step(out, t, sample, generator=torch.Generator().manual_seed(3))
        steps.append((sample, result.prev_sample))
        return result

    scheduler.step = recorded
    scheduler_sample_loop(scheduler, lambda x, t: torch.zeros_like(x),
                          torch.full((1, 1, 2, 2), 0.5), 4)
    x, prev = steps[0]
    noise = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(prev, x + sigma_up * noise)


def test_a_step_that_makes_nan_is_refused_in_one_line(monkeypatch, image_model):
    # the float32 arithmetic as it was: the check alone stands between it and NaN samples
    monkeypatch.setattr(scheduler_sampling, '_ancestral_sigmas_in_float64',
                        lambda scheduler, device: None)
    with pytest.raises(SamplerStepError) as info:
        sample_images(image_model, [0, 1], seeds=0, sampler=EULER_A, num_steps=4)
    message = str(info.value)
    assert '\n' not in message
    for part in (f'sampler {EULER_A} with 4 steps', 'at step 1 of 4',
                 "beta_schedule 'squaredcos_cap_v2'", 'another step count (e.g. 5)',
                 'another sampler'):
        assert part in message, message


def test_nan_from_the_model_is_left_to_the_tools():
    scheduler = build_noise_scheduler(EULER_A, beta_schedule='squaredcos_cap_v2')
    x = scheduler_sample_loop(scheduler, lambda x, t: torch.full_like(x, float('nan')),
                              torch.zeros(1, 1, 2, 2), 3)
    assert torch.isnan(x).all()


def test_infer_warning_says_who_made_the_nan(image_model):
    from tools.infer import nan_warning
    checked = nan_warning(2, 2, image_model, dict(sampler=EULER_A, num_steps=4))
    assert checked.startswith('warning: 2 of 2 samples hold NaN or inf (saved black): '
                              "the model's outputs held them")
    assert "weights may be damaged" in checked and '--steps' not in checked
    # DiT's own loops are not checked: the sampler may have, and it is named
    unchecked = nan_warning(1, 2, image_model, dict(sampler='ddim', num_steps=7))
    assert "the model's outputs or the sampler's steps (ddim, 7 steps)" in unchecked
    assert 'another --steps or --sampler' in unchecked and '\n' not in unchecked
    # no sampler chosen: the objective's default, named
    default = nan_warning(1, 2, image_model, dict(sampler=None, num_steps=None))
    assert "(ddpm, 250 steps)" in default

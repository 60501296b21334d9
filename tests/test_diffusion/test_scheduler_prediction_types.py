"""diffusers' schedulers sampling an x0-predicting GaussianDiffusion (``predict_xstart``,
the demo video configs'), and the sampler-option hint for a tools' key (``fps``).

The schedulers were handed the model's x0 as if it were epsilon: samples of |x| in the
hundreds (~90,000 for a trained video DiT) where DiT's own 'ddim' / 'ddpm' gave |x| ~ 1.

Toy: data ~ N(MU_y, STD^2) per class y, whose exact x0 and epsilon predictors are closed
form at any noise level, so an x0-predicting objective and its epsilon-predicting
counterpart must give the same samples from the same noise and seeds.
"""
import numpy as np
import pytest
import torch
from torch import nn

from mmsora.diffusion import GaussianDiffusion
from mmsora.diffusion.scheduler_sampling import (NOT_SAMPLE_ARGS, check_sample_settings,
                                                 check_sampler_options,
                                                 scheduler_sample_loop)
from mmsora.diffusion.schedulers import build_noise_scheduler
from mmsora.registry import MODELS

MUS, STD = (0.5, -0.5, 1.0), 0.3
# DiT's linear schedule, written independently of the code under test. Fractional
# timesteps (Euler's) sit at the sigma interpolated linearly, as Euler puts them.
ACP = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
SIGMAS = np.sqrt((1 - ACP) / ACP)

SCHEDULERS = ['DDPMScheduler', 'DDIMScheduler', 'DPMSolverMultistepScheduler',
              'EulerDiscreteScheduler', 'EulerAncestralDiscreteScheduler',
              'UniPCMultistepScheduler']
# DiT's own sampler each one discretises (ancestral ones: 'ddpm').
OWN = {'DDPMScheduler': 'ddpm', 'EulerAncestralDiscreteScheduler': 'ddpm'}
STEPS = 25


def _acp(t, ndim):
    sigma = np.interp(t.double().cpu().numpy(), np.arange(1000), SIGMAS)
    return torch.from_numpy(1 / (1 + sigma**2)).float().view(-1, *([1] * (ndim - 1)))


def _prediction(x, t, mu, predicts_x0):
    """E[x0 | x_t] or E[eps | x_t] for x0 ~ N(mu, STD^2), x_t = sqrt(acp) x0 +
    sqrt(1 - acp) eps."""
    acp = _acp(t, x.ndim)
    var = acp * STD**2 + 1 - acp
    if predicts_x0:
        return mu + acp.sqrt() * STD**2 * (x - acp.sqrt() * mu) / var
    return (1 - acp).sqrt() * (x - acp.sqrt() * mu) / var


def _toy_model(predicts_x0, learn_sigma, mu=MUS[0]):
    def model(x, t, **kwargs):
        out = _prediction(x, t, mu, predicts_x0)
        return torch.cat([out, -torch.ones_like(out)], 1) if learn_sigma else out
    return model


def _sample(sampler, predicts_x0, learn_sigma, noise, steps=STEPS):
    diffusion = GaussianDiffusion(learn_sigma=learn_sigma, predict_xstart=predicts_x0)
    generators = [torch.Generator().manual_seed(i) for i in range(len(noise))]
    return diffusion.sample(_toy_model(predicts_x0, learn_sigma), noise, {}, sampler=sampler,
                            num_steps=steps, generators=generators)


def _noise(n=400, seed=0):
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('learn_sigma', [True, False])
@pytest.mark.parametrize('sampler', SCHEDULERS)
def test_x0_objective_samples_as_the_epsilon_objective(sampler, learn_sigma):
    """Same noise and seeds: the x0-predicting objective's samples are its epsilon
    counterpart's (to float rounding), and their distribution is DiT's own sampler's
    (the same discretisation error: 25 linear-schedule steps shrink the std)."""
    noise = _noise()
    x0_samples = _sample(sampler, True, learn_sigma, noise)
    eps_samples = _sample(sampler, False, learn_sigma, noise)
    assert x0_samples.abs().max() < 3  # it was in the hundreds
    torch.testing.assert_close(x0_samples, eps_samples, atol=1e-4, rtol=1e-4)
    # (learned sigma -1: the posterior variance, the diffusers schedulers' own; DiT's
    # 'ddpm' without it takes beta, a larger one, and so does DDPMScheduler then)
    own = _sample(OWN.get(sampler, 'ddim'), True,
                  learn_sigma if sampler == 'DDPMScheduler' else True, noise)
    assert x0_samples.mean().item() == pytest.approx(MUS[0], abs=0.03)
    assert x0_samples.std().item() == pytest.approx(own.std().item(), rel=0.1)
    if sampler == 'DDIMScheduler':  # the same steps and chain as DiT's DDIM (its
        torch.testing.assert_close(x0_samples, own, atol=1e-4, rtol=1e-4)  # stride)


@pytest.mark.parametrize('sampler', [s for s in SCHEDULERS if s !=
                                     'EulerAncestralDiscreteScheduler'])
def test_x0_objective_matches_the_schedulers_own_sample_prediction(sampler):
    """Where a scheduler takes x0 itself (prediction_type='sample'), handing it the
    model's x0 gives the samples of the objective's epsilon (the noise level the
    objective converts at is the one the scheduler steps at, Euler's fractional
    timesteps included). Euler-ancestral has no 'sample' prediction type."""
    noise = _noise(100)
    diffusion = GaussianDiffusion(learn_sigma=False, predict_xstart=True)
    scheduler = build_noise_scheduler(sampler, prediction_type='sample',
                                      **diffusion.scheduler_overrides(sampler))
    model = _toy_model(True, False)
    generators = [torch.Generator().manual_seed(i) for i in range(len(noise))]
    direct = scheduler_sample_loop(
        scheduler, lambda x, t: model(x, torch.full((len(x),), float(t))), noise, STEPS,
        generators)
    torch.testing.assert_close(_sample(sampler, True, False, noise), direct,
                               atol=1e-4, rtol=1e-4)


@MODELS.register_module(force=True)
class GaussianToyDenoiser(nn.Module):
    """The exact x0 / epsilon predictor of class-conditional N(MUS[y], STD^2) data, with
    DiT's ``forward_with_cfg`` (guidance on the prediction channels, the learned-sigma
    channels passed through). The null label is ``len(MUS)``: data N(0, STD^2)."""

    def __init__(self, predicts_x0=True, learn_sigma=True, in_channels=1):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = len(MUS)
        self.predicts_x0, self.learn_sigma = predicts_x0, learn_sigma
        self.unused = nn.Parameter(torch.zeros(()))  # LatentDiffusion reads its dtype

    def forward(self, x, t, y):
        mu = torch.tensor([*MUS, 0.0])[y].view(-1, *([1] * (x.ndim - 1)))
        out = _prediction(x, t, mu, self.predicts_x0)
        return torch.cat([out, -torch.ones_like(out)], 1) if self.learn_sigma else out

    def forward_with_cfg(self, x, t, y, cfg_scale, guidance_channels=None):
        half = x[:len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        c = guidance_channels or self.in_channels
        cond, uncond = out[:, :c].chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), out[:, c:]], 1)


def _latent_diffusion(predicts_x0):
    return MODELS.build(dict(
        type='LatentDiffusion', latent_shape=(1, 2, 2), num_classes=len(MUS),
        denoiser=dict(type='GaussianToyDenoiser', predicts_x0=predicts_x0),
        diffusion=dict(type='GaussianDiffusion', predict_xstart=predicts_x0))).eval()


@pytest.mark.parametrize('sampler', ['ddim', *SCHEDULERS])
def test_guided_x0_predictions_sample_as_guided_epsilon(sampler):
    """LatentDiffusion with classifier-free guidance: the guided x0 (the denoiser's
    combination, before the sampler) samples as the guided epsilon of the epsilon
    model (guidance weights sum to 1, the x0 -> epsilon map is affine), as the 'ddim'
    path re-derives epsilon from the guided x0."""
    labels, seeds = [0, 1, 2, 0], [3, 4, 5, 6]
    kw = dict(sampler=sampler, num_steps=10, cfg_scale=3.0, seeds=seeds)
    x0 = _latent_diffusion(True).sample(labels, **kw)
    eps = _latent_diffusion(False).sample(labels, **kw)
    assert x0.abs().max() < 5
    torch.testing.assert_close(x0, eps, atol=1e-4, rtol=1e-4)


def test_a_tools_key_is_not_hinted_as_its_own_fix():
    """A run's whole sample_cfg handed to the sampler (fps: the tools' key for saving
    videos) said 'takes no option fps (...); did you mean fps?'."""
    assert 'fps' in NOT_SAMPLE_ARGS
    for key in (*NOT_SAMPLE_ARGS, 'cfg_scale', 'seeds'):
        with pytest.raises(ValueError, match=f'takes no option {key} ') as info:
            check_sampler_options('ddim', {key: 1}, ('eta',))
        assert f'did you mean {key}' not in str(info.value)
        assert f'{key} is ' in str(info.value)  # what it is instead
    with pytest.raises(ValueError) as info:
        GaussianDiffusion().sample(_toy_model(False, True), _noise(1), {}, sampler='ddim',
                                   num_steps=2, fps=8)
    assert 'did you mean fps' not in str(info.value)
    assert 'fps is not for the sampler' in str(info.value)
    # A typo of an option, a setting or a tools' key is still hinted as it.
    for typo, fix in (('etta', 'eta'), ('num_step', 'num_steps'), ('fsp', 'fps')):
        with pytest.raises(ValueError, match=f'; did you mean {fix}\\?$'):
            check_sampler_options('ddim', {typo: 1}, ('eta',))
    with pytest.raises(ValueError, match='did you mean eta for etta.*fps is not for'):
        check_sampler_options('ddim', dict(fps=8, etta=0.5), ('eta',))
    # In a config's sample_cfg, fps is the tools' and accepted as before.
    check_sample_settings(GaussianDiffusion(), dict(sampler='ddim', eta=0.0, fps=8))

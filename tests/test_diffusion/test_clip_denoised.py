"""GaussianDiffusion's ``clip_denoised`` sampler option ('ddpm' and 'ddim'): IDDPM's
clamp of each step's predicted x0 to [-1, 1] (improved-diffusion's ``p_sample`` and
``ddim_sample`` with ``clip_denoised=True``, for pixel-space models), against the steps
written out by hand from the linear schedule's closed form; off by default (DiT's
sample.py samples latents unclipped)."""
import numpy as np
import pytest
import torch

from mmsora.diffusion import GaussianDiffusion
from mmsora.diffusion.scheduler_sampling import check_sample_settings

T = 50  # a 50-step process (betas up to 0.4), sampled with all its steps
SHAPE = (2, 3, 4, 4)


def model(x, t):
    """An epsilon that leaves the predicted x0 far outside [-1, 1] at large t."""
    return 0.5 * x


def schedule():
    """DiT's linear betas for T steps (rescaled by 1000 / T), and their alphabar."""
    scale = 1000 / T
    betas = np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    return betas, np.cumprod(1 - betas)


def pred_x0(x, t, alphas_cumprod, clip):
    eps = model(x, t)
    x0 = x / np.sqrt(alphas_cumprod[t]) - np.sqrt(1 / alphas_cumprod[t] - 1) * eps
    return x0.clamp(-1, 1) if clip else x0


def ddim_by_hand(noise, clip):
    """Song et al.'s eq. 12 with eta = 0, epsilon re-derived from the (clipped) x0."""
    _, ab = schedule()
    ab_prev = np.append(1.0, ab[:-1])
    x = noise.double()
    for t in reversed(range(T)):
        x0 = pred_x0(x, t, ab, clip)
        eps = (x / np.sqrt(ab[t]) - x0) / np.sqrt(1 / ab[t] - 1)
        x = x0 * np.sqrt(ab_prev[t]) + np.sqrt(1 - ab_prev[t]) * eps
    return x


def ddpm_by_hand(noise, clip, seed):
    """The posterior mean at the (clipped) x0 plus fixed-large noise (a draw each step,
    none added at t = 0), the noise drawn from one generator in the loop's order."""
    betas, ab = schedule()
    ab_prev = np.append(1.0, ab[:-1])
    coef1 = betas * np.sqrt(ab_prev) / (1 - ab)
    coef2 = (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    posterior_variance = betas * (1 - ab_prev) / (1 - ab)
    variance = np.append(posterior_variance[1], betas[1:])
    generator = torch.Generator().manual_seed(seed)
    x = noise.double()
    for t in reversed(range(T)):
        mean = coef1[t] * pred_x0(x, t, ab, clip) + coef2[t] * x
        z = torch.randn(SHAPE, generator=generator).double()
        x = mean + (np.sqrt(variance[t]) * z if t > 0 else 0)
    return x


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_clip_denoised_matches_the_hand_computation(sampler):
    noise = 3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    diffusion = GaussianDiffusion(num_timesteps=T, learn_sigma=False)
    results = {}
    for clip in (True, False, None):
        options = {} if clip is None else dict(clip_denoised=clip)
        check_sample_settings(diffusion, dict(sampler=sampler, num_steps=T, **options))
        results[clip] = diffusion.sample(
            lambda x, t: model(x, t), noise, {}, sampler, T,
            generators=torch.Generator().manual_seed(7), **options)
        expected = (ddim_by_hand(noise, bool(clip)) if sampler == 'ddim' else
                    ddpm_by_hand(noise, bool(clip), 7))
        torch.testing.assert_close(results[clip].double(), expected, rtol=1e-4, atol=1e-5)
    # the clamp changed the samples (the hand steps would match either way otherwise),
    # and the default is not to clip
    assert (results[True] - results[False]).abs().max() > 0.1
    torch.testing.assert_close(results[None], results[False], rtol=0, atol=0)

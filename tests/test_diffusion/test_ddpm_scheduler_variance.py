"""GaussianDiffusion's sampler 'DDPMScheduler' steps with the objective's fixed variance:
it was built with diffusers' default variance_type='fixed_small' whatever the objective,
so a fixed_large one (sigma_small=False, learn_sigma=False) sampled with the posterior
variance where its own 'ddpm' sampler adds beta (walk-through ah). diffusers_dit's
export names the same variance (one helper, ddpm_variance_type)."""
import pytest
import torch

from mmsora.diffusion import GaussianDiffusion
from mmsora.diffusion.gaussian import space_timesteps
from mmsora.diffusion.schedulers import ddpm_variance_type

STEPS = 100  # (all of the process's steps: DDPMScheduler's and 'ddpm''s timesteps agree)


def _model(x, t, **kwargs):
    """An epsilon model of fixed variance: a linear map of x_t."""
    return 0.1 * x


def _sample(diffusion, sampler, steps=STEPS, **options):
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(i) for i in range(len(noise))]
    return diffusion.sample(_model, noise, {}, sampler, steps, generators, **options)


def test_ddpm_scheduler_takes_the_objectives_variance():
    for sigma_small, learn_sigma, expected in [(False, False, 'fixed_large'),
                                               (True, False, 'fixed_small'),
                                               (False, True, 'fixed_small')]:
        diffusion = GaussianDiffusion(learn_sigma=learn_sigma, sigma_small=sigma_small)
        assert ddpm_variance_type(sigma_small, learn_sigma) == expected
        if not learn_sigma:  # (IDDPM's names are diffusers')
            assert diffusion.model_var_type == expected
        assert diffusion.build_scheduler('DDPMScheduler').config.variance_type == expected
        # DPM-Solver's variance_type (a learned variance in the output or not): untouched
        assert diffusion.build_scheduler(
            'DPMSolverMultistepScheduler').config.variance_type is None


def test_fixed_large_ddpm_scheduler_samples_as_the_ddpm_sampler():
    large = GaussianDiffusion(num_timesteps=STEPS, learn_sigma=False, sigma_small=False)
    small = GaussianDiffusion(num_timesteps=STEPS, learn_sigma=False, sigma_small=True)
    ours = _sample(large, 'ddpm')
    torch.testing.assert_close(_sample(large, 'DDPMScheduler'), ours, atol=1e-4, rtol=1e-4)
    # the posterior variance (what it stepped with before) samples something else
    posterior = _sample(small, 'ddpm')
    assert (ours - posterior).abs().max() > 0.05
    # and a user's variance_type still wins
    torch.testing.assert_close(_sample(large, 'DDPMScheduler', variance_type='fixed_small'),
                               posterior, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('steps', [25, 10])
def test_respaced_the_ddpm_sampler_is_linspace_spacing(steps):
    """Fewer steps than the process: DiT's respacing (create_diffusion(str(N)), the
    'ddpm' sampler's) spreads them evenly from 0 to T - 1, as diffusers'
    timestep_spacing='linspace'; DDPMScheduler's default 'leading' is another process
    (the README says which)."""
    large = GaussianDiffusion(num_timesteps=STEPS, learn_sigma=False, sigma_small=False)
    ours = _sample(large, 'ddpm', steps)
    scheduler = large.build_scheduler('DDPMScheduler', timestep_spacing='linspace')
    scheduler.set_timesteps(steps)
    assert sorted(scheduler.timesteps.tolist()) == sorted(space_timesteps(STEPS, [steps]))
    torch.testing.assert_close(_sample(large, 'DDPMScheduler', steps,
                                       timestep_spacing='linspace'),
                               ours, atol=1e-3, rtol=1e-4)
    leading = _sample(large, 'DDPMScheduler', steps)
    assert (leading - ours).abs().max() > 1


def test_the_scheduler_helpers_are_exported():
    """mmsora.diffusion exports schedulers' public helpers (scheduler_settings was left
    out, beside build_noise_scheduler and dit_scheduler_config)."""
    import mmsora.diffusion
    from mmsora.diffusion import schedulers
    assert set(schedulers.__all__) <= set(mmsora.diffusion.__all__)
    assert mmsora.diffusion.scheduler_settings is schedulers.scheduler_settings

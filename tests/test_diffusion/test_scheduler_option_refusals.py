"""A diffusers scheduler sampler's options as check_scheduler_options refuses them
(review G1): the option named and the reason given belong together (karras and beta
sigmas' 'Only one of ...' was said of use_dynamic_shifting given with them); a fraction
for a whole-number setting is said to be one (DDIM's steps_offset=1.5 was refused in
numpy's words, "Cannot cast ufunc 'add' output ..."); the dynamic shift's settings,
which act only with the mu the sampling loop does not pass, are refused on FlowMatch
too (they passed and changed nothing); numpy's bools are GaussianDiffusion's
clip_denoised too."""
import re

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.diffusion.scheduler_sampling import check_sample_settings, check_scheduler_options

DPM = 'DPMSolverMultistepScheduler'
FLOW = 'FlowMatchEulerDiscreteScheduler'
MU = (r"set_timesteps then needs `mu` \(SD3's and Flux's resolution-dependent shift, "
      r".*\), which mmsora's sampling loop does not pass")
SHIFT_HINT = r" \(for a fixed shift give shift=\.\.\., e\.g\. SD3's 3\.0\)"


def _never_called(x, t, **kwargs):
    raise AssertionError('the model was called before the options were judged')


def _refused(objective, sampler, options, message):
    """The same one line from ``sample`` and from ``check_sample_settings``."""
    with pytest.raises(ValueError, match=message) as info:
        objective().sample(_never_called, torch.zeros(1, 4, 2, 2), {}, sampler, 10, **options)
    assert '\n' not in str(info.value)
    with pytest.raises(ValueError, match=message):
        check_sample_settings(objective(), dict(sampler=sampler, num_steps=10, **options))


# ------------------------------------------------------ the option named, and its reason
def test_an_option_given_beside_a_refused_pair_is_not_blamed_for_it():
    """use_dynamic_shifting alone is refused for another reason (its mu): it is not one
    of the options the pair's 'Only one of ...' is said of."""
    message = (rf"^sampler '{FLOW}' refused use_karras_sigmas=True, use_beta_sigmas=True: "
               r'Only one of .* can be used; give other values$')
    _refused(Transport, FLOW, dict(use_karras_sigmas=True, use_beta_sigmas=True,
                                   use_dynamic_shifting=True), message)


class _Scheduler:
    """A scheduler that needs mu with both stochastic_sampling and use_karras_sigmas."""

    def __init__(self, both):
        self.both, self.timesteps = both, torch.tensor([1.0])

    def set_timesteps(self, num_inference_steps=None, device=None, mu=None):
        if self.both:
            raise ValueError('`mu` must be passed when both are set')

    def step(self, model_output, timestep, sample):
        return sample


def _build(stochastic_sampling=False, use_karras_sigmas=False):
    if use_karras_sigmas and not stochastic_sampling:
        raise ValueError('karras sigmas need stochastic sampling here')
    return _Scheduler(stochastic_sampling and use_karras_sigmas)


def test_the_mu_refusal_names_the_options_that_make_it():
    """Without stochastic_sampling the scheduler refuses use_karras_sigmas for another
    reason: that smaller set is not the culprit of the mu refusal (it was, named alone
    with the mu message)."""
    with pytest.raises(ValueError) as info:
        check_scheduler_options(FLOW, dict(stochastic_sampling=True, use_karras_sigmas=True),
                                (), 'a test process', _build, 4)
    message = str(info.value)
    assert message.startswith(f"sampler '{FLOW}' cannot take stochastic_sampling=True, "
                              'use_karras_sigmas=True: its set_timesteps then needs `mu`'), \
        message
    assert message.endswith('leave them out (for a fixed shift give shift=..., e.g. '
                            "SD3's 3.0)"), message
    with pytest.raises(ValueError, match=rf"^sampler '{FLOW}' refused use_karras_sigmas=True: "
                                         r'karras sigmas need stochastic sampling here; give '
                                         r'another value$'):
        check_scheduler_options(FLOW, dict(use_karras_sigmas=True), (), 'a test process',
                                _build, 4)


# ------------------------------------------------------------------------ whole numbers
@pytest.mark.parametrize('sampler, options, default', [
    ('DDIMScheduler', dict(steps_offset=1.5), 0),
    (DPM, dict(solver_order=2.0), 2),
    (DPM, dict(solver_order=np.float32(2.0)), 2),
    ('UniPCMultistepScheduler', dict(solver_order=2.5), 2),
])
def test_a_fraction_for_a_whole_number_setting_is_refused(sampler, options, default):
    (key, value), = options.items()
    _refused(GaussianDiffusion, sampler, options,
             rf'^{re.escape(f"{key}={value!r}")} is not a whole number \(a setting of '
             rf'{sampler}; its default: {default}\): give a whole number$')


def test_a_word_for_a_number_setting_is_refused_in_our_words():
    """("can't multiply sequence by non-int of type 'str'" before; then 'a number', which
    '2' reads as)"""
    _refused(GaussianDiffusion, DPM, dict(solver_order='2'),
             rf"^solver_order='2' is not a whole number \(a setting of {DPM}; its default: "
             r'2\): give a whole number$')


def test_whole_numbers_numpys_too_still_pass():
    diffusion = GaussianDiffusion()
    diffusion.check_sample_options(DPM, 10, solver_order=np.int64(3))
    diffusion.check_sample_options('DDIMScheduler', 10, steps_offset=1)
    diffusion.check_sample_options('EulerDiscreteScheduler', 10, sigma_min=None)
    Transport().check_sample_options(FLOW, 10, shift=np.float64(3), shift_terminal=None)


# ----------------------------------------------------- the dynamic shift's settings
def test_the_dynamic_shift_settings_change_nothing_without_it():
    """Why they are refused: without use_dynamic_shifting (which needs mu) FlowMatch's
    sigmas are the same with them."""
    default = FlowMatchEulerDiscreteScheduler(shift=3.0)
    given = FlowMatchEulerDiscreteScheduler(shift=3.0, time_shift_type='linear',
                                            base_shift=0.9, max_shift=3.0,
                                            base_image_seq_len=1, max_image_seq_len=2)
    for scheduler in (default, given):
        scheduler.set_timesteps(10)
    assert torch.equal(default.sigmas, given.sigmas)


@pytest.mark.parametrize('options', [
    dict(time_shift_type='linear'), dict(time_shift_type='exponential'),
    dict(base_shift=0.9), dict(max_shift=3.0), dict(base_image_seq_len=1),
    dict(max_image_seq_len=2)])
def test_the_dynamic_shift_settings_are_refused_on_flow_match(options):
    (key, value), = options.items()
    _refused(Transport, FLOW, options,
             rf"^sampler '{FLOW}' cannot take {key}={value!r}: it acts only with "
             rf'use_dynamic_shifting, whose {MU}; leave it out{SHIFT_HINT}$')


def test_the_dynamic_shift_settings_refused_together():
    _refused(Transport, FLOW, dict(base_shift=0.9, max_shift=3.0, shift=3.0),
             rf"^sampler '{FLOW}' cannot take base_shift=0.9, max_shift=3.0: they act only "
             rf'with use_dynamic_shifting, whose {MU}; leave them out$')
    _refused(Transport, FLOW, dict(use_dynamic_shifting=True, time_shift_type='linear'),
             rf"^sampler '{FLOW}' cannot take use_dynamic_shifting=True, "
             rf"time_shift_type='linear': its {MU}; leave them out{SHIFT_HINT}$")


# ---------------------------------------------------- numpy's bools for clip_denoised
@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_numpys_bools_are_clip_denoiseds_bools(sampler):
    diffusion = GaussianDiffusion(num_timesteps=100, learn_sigma=False)
    for value in (np.True_, np.False_):
        diffusion.check_sample_options(sampler, 4, clip_denoised=value)
        check_sample_settings(diffusion, dict(sampler=sampler, num_steps=4,
                                              clip_denoised=value))

    def sample(clip):
        noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
        generators = [torch.Generator().manual_seed(1)]
        return diffusion.sample(lambda x, t: 3 * x, noise, {}, sampler, 4, generators,
                                clip_denoised=clip)

    torch.testing.assert_close(sample(np.True_), sample(True), rtol=0, atol=0)
    assert not torch.equal(sample(True), sample(False))  # (the clamp acts here)
    with pytest.raises(ValueError, match=r"^clip_denoised='true' is not True or False"):
        diffusion.check_sample_options(sampler, 4, clip_denoised='true')

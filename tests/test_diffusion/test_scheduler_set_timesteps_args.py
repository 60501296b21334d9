"""A scheduler option that makes set_timesteps need an argument the sampling loop does
not pass is refused in one line of ours: --sampler-options use_dynamic_shifting=True
(SD3's and Flux's resolution-dependent shift) was refused in diffusers' words, "`mu`
must be passed when `use_dynamic_shifting` is set to be `True`; give another value"
(walk-through ah)."""
import pytest
import torch

from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.diffusion.scheduler_sampling import check_sample_settings

FLOW = 'FlowMatchEulerDiscreteScheduler'
NEEDS_MU = (r"cannot take use_dynamic_shifting=True: its set_timesteps then needs `mu` "
            r"\(SD3's and Flux's resolution-dependent shift, .*\), which mmsora's sampling "
            r"loop does not pass; leave it out")


def _never_called(*args, **kwargs):
    raise AssertionError('the model was called before the options were checked')


def test_flow_match_dynamic_shifting_is_refused_with_shift_instead():
    transport = Transport()
    with pytest.raises(ValueError, match=rf"^sampler '{FLOW}' {NEEDS_MU} \(for a fixed "
                                         r"shift give shift=\.\.\., e\.g\. SD3's 3\.0\)$"):
        check_sample_settings(transport, dict(sampler=FLOW, num_steps=10,
                                              use_dynamic_shifting=True))
    # the shift given with it is not blamed, nor advised again (review G1)
    with pytest.raises(ValueError, match=rf"^sampler '{FLOW}' {NEEDS_MU}$"):
        check_sample_settings(transport, dict(sampler=FLOW, num_steps=10,
                                              use_dynamic_shifting=True, shift=3.0))
    with pytest.raises(ValueError, match=NEEDS_MU) as info:
        transport.sample(_never_called, torch.zeros(1, 4, 2, 2), {}, FLOW, 10,
                         use_dynamic_shifting=True)
    assert '\n' not in str(info.value)
    # other refusals keep the scheduler's words
    with pytest.raises(ValueError, match=rf"^sampler '{FLOW}' refused use_karras_sigmas=True, "
                                         r"use_beta_sigmas=True: Only one of"):
        transport.check_sample_options(FLOW, 10, use_karras_sigmas=True, use_beta_sigmas=True)


def test_unipc_dynamic_shifting_is_the_objectives_on_gaussian_diffusion():
    # (it shifts flow sigmas, which GaussianDiffusion fixes off: refused as one of its
    # settings, not for the mu it would then need)
    with pytest.raises(ValueError, match=r"^sampler 'UniPCMultistepScheduler' takes "
                                         r"use_dynamic_shifting from the model's objective"):
        GaussianDiffusion().check_sample_options('UniPCMultistepScheduler', 10,
                                                 use_dynamic_shifting=True)

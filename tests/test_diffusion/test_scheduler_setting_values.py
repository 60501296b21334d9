"""A diffusers scheduler sampler's whole-number settings, as check_scheduler_options
judges them (review F1): one below its least value is refused in our words (UniPC's
solver_order=0 was refused in diffusers', 'list assignment index out of range'; DDIM's
steps_offset=-1 sampled a timestep -1); a word for one says 'a whole number' (it said
'a number', which '2' reads as); 0-d integer tensors and arrays are whole numbers (they
were 'not a whole number'), and reach diffusers as ints; FlowMatch's list of options
does not offer the dynamic shift it refuses."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UniPCMultistepScheduler

from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.diffusion.scheduler_sampling import (check_num_steps, check_sample_settings,
                                                 check_scheduler_options, whole_number)
from tests.sampling_refusals import refused_alike

DPM = 'DPMSolverMultistepScheduler'
UNIPC = 'UniPCMultistepScheduler'
FLOW = 'FlowMatchEulerDiscreteScheduler'


def _sample(sampler, **options):
    diffusion = GaussianDiffusion(learn_sigma=False)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    return diffusion.sample(lambda x, t: 0.1 * x, noise, {}, sampler, 6, **options)


# ------------------------------------------------------------- below the least value
def test_why_diffusers_words_were_no_help():
    """UniPC's solver_order 0 fails at the first step in Python's words; DDIM's
    steps_offset -1 is not refused at all: its last timestep is -1, and
    alphas_cumprod[-1] is the noisiest."""
    unipc = UniPCMultistepScheduler(solver_order=0)
    unipc.set_timesteps(10)
    x = torch.zeros(1, 1, 1, 1)
    with pytest.raises(IndexError, match='list assignment index out of range'):
        unipc.step(x, unipc.timesteps[0], x)
    ddim = DDIMScheduler(steps_offset=-1)
    ddim.set_timesteps(10)
    assert int(ddim.timesteps[-1]) == -1


@pytest.mark.parametrize('objective, sampler, key, value, least, default, highest', [
    (GaussianDiffusion, UNIPC, 'solver_order', 0, 1, 2, None),
    # (DPM-Solver's orders go up to 3: said as its range)
    (GaussianDiffusion, DPM, 'solver_order', -1, 1, 2, 3),
    (GaussianDiffusion, DPM, 'solver_order', np.int64(0), 1, 2, 3),
    (GaussianDiffusion, UNIPC, 'solver_order', torch.tensor(0), 1, 2, None),
    (GaussianDiffusion, 'DDIMScheduler', 'steps_offset', -1, 0, 0, None),
    (GaussianDiffusion, 'EulerDiscreteScheduler', 'steps_offset', -2, 0, 0, None),
    # (not the objective's on FlowMatch: diffusers' words were 'division by zero')
    (Transport, FLOW, 'num_train_timesteps', 0, 1, 1000, None),
])
def test_a_whole_setting_below_its_least_value_is_refused_in_our_words(
        objective, sampler, key, value, least, default, highest):
    bounds = f'>= {least}' if highest is None else f'in [{least}, {highest}]'
    whose = '' if highest is None else f', whose highest order is {highest}'
    refused_alike(objective, sampler, {key: value},
             f'{key} must be a whole number {bounds} (a setting of {sampler}{whose}; its '
             f'default: {default}), got {value!r}')


def test_the_least_values_pass():
    diffusion = GaussianDiffusion()
    for sampler in (DPM, UNIPC):
        diffusion.check_sample_options(sampler, 10, solver_order=1)
    for sampler in ('DDIMScheduler', 'DDPMScheduler', 'EulerDiscreteScheduler'):
        diffusion.check_sample_options(sampler, 10, steps_offset=0)
    Transport().check_sample_options(FLOW, 10, num_train_timesteps=1)


def test_a_refused_dynamic_shift_setting_is_said_so_before_its_least_value():
    """base_image_seq_len=0 is refused for acting only with the dynamic shift (a least
    value of 1 would have sent the user to a value refused for that)."""
    with pytest.raises(ValueError, match=rf"^sampler '{FLOW}' cannot take "
                                         r'base_image_seq_len=0: it acts only with '):
        Transport().check_sample_options(FLOW, 10, base_image_seq_len=0)


# ------------------------------------------------------------------- words for wholes
@pytest.mark.parametrize('sampler, key, value, default', [
    (DPM, 'solver_order', '2', 2),
    ('DDIMScheduler', 'steps_offset', '1', 0),
    (UNIPC, 'solver_order', True, 2),
])
def test_a_word_or_a_bool_for_a_whole_setting_is_no_whole_number(sampler, key, value,
                                                                  default):
    refused_alike(GaussianDiffusion, sampler, {key: value},
             f'{key}={value!r} is not a whole number (a setting of {sampler}; its default: '
             f'{default}): give a whole number')


# ---------------------------------------------------------- 0-d tensors and arrays
@pytest.mark.parametrize('value', [torch.tensor(3), torch.tensor(3, dtype=torch.uint8),
                                   np.array(3), np.int32(3)])
def test_a_0d_integer_tensor_is_a_whole_setting_and_samples_as_the_int(value):
    diffusion = GaussianDiffusion()
    diffusion.check_sample_options(DPM, 10, solver_order=value)
    check_sample_settings(diffusion, dict(sampler=DPM, num_steps=10, solver_order=value))
    scheduler = diffusion.build_scheduler(DPM, solver_order=value)
    assert type(scheduler.config.solver_order) is int and scheduler.config.solver_order == 3
    assert '"solver_order": 3' in scheduler.to_json_string()
    torch.testing.assert_close(_sample(DPM, solver_order=value), _sample(DPM, solver_order=3),
                               rtol=0, atol=0)


@pytest.mark.parametrize('value', [torch.tensor(3.0), torch.tensor(2.5), torch.tensor([3]),
                                   torch.tensor(True), np.array(2.5), np.array([3, 3]),
                                   np.array(True), 3.0])
def test_other_tensors_and_fractions_are_still_no_whole_number(value):
    refused_alike(GaussianDiffusion, DPM, dict(solver_order=value),
             f'solver_order={value!r} is not a whole number (a setting of {DPM}; its '
             'default: 2): give a whole number')


def test_whole_number():
    for value in (3, np.int64(3), np.uint8(3), torch.tensor(3), np.array(3),
                  torch.tensor(3, dtype=torch.int16)):
        assert whole_number(value) == 3 and type(whole_number(value)) is int
    for value in (True, np.True_, torch.tensor(True), 3.0, torch.tensor(3.0), '3',
                  torch.tensor([3]), np.array([3]), None):
        assert whole_number(value) is None


@pytest.mark.parametrize('num_steps', [torch.tensor(5), np.array(5), np.int64(5), 5])
def test_a_0d_integer_step_count_is_taken_as_the_int(num_steps):
    """check_num_steps hands the samplers Python's int (DDPM's respacing read
    str(num_steps), 'tensor(5)': a 0-d tensor was refused with the int to pass); the
    samplers themselves: test_sampling_setting_limits.py."""
    steps = check_num_steps(num_steps)
    assert type(steps) is int and steps == 5
    with pytest.raises(ValueError, match=r'^num_steps must be a whole number >= 1, got '):
        check_num_steps(torch.tensor(2.5))


# --------------------------------------------------- FlowMatch's options as offered
def test_flow_matchs_options_do_not_offer_the_dynamic_shift():
    with pytest.raises(ValueError) as info:
        Transport().check_sample_options(FLOW, 10, shiftt=3.0)
    message = str(info.value)
    offered = message.split('(its options: ')[1].split(';')[0].split(', ')
    assert 'shift' in offered and 'shift_terminal' in offered, message
    for name in ('use_dynamic_shifting', 'time_shift_type', 'base_shift', 'max_shift',
                 'base_image_seq_len', 'max_image_seq_len', 'invert_sigmas'):
        assert name not in offered, message
    assert message.endswith('; did you mean shift?'), message
    with pytest.raises(ValueError) as info:  # (nor hinted: refused when given)
        Transport().check_sample_options(FLOW, 10, max_shfit=3.0)
    assert 'did you mean' not in str(info.value)


# ------------------------------------------- a refusal in the step: still the trial's
class _FailingStep:
    """A scheduler whose step fails with ``stochastic_sampling``, as UniPC's did with
    solver_order=0 (the trial run's last stage: no real setting fails there now)."""

    def __init__(self, stochastic_sampling=False):
        self.stochastic_sampling = stochastic_sampling
        self.timesteps = torch.tensor([1.0, 0.5])

    def set_timesteps(self, num_inference_steps=None, device=None):
        pass

    def step(self, model_output, timestep, sample):
        if self.stochastic_sampling:
            raise IndexError('list assignment index out of range')
        return sample


def _failing_step(shift=1.0, **options):
    """FlowMatch's build: a shift taken, the rest to the failing scheduler."""
    return _FailingStep(**options)


def test_a_value_refused_in_the_step_alone_is_still_named():
    with pytest.raises(ValueError) as info:
        check_scheduler_options(FLOW, dict(stochastic_sampling=True, shift=3.0), (),
                                'a test process', _failing_step, 4)
    assert str(info.value) == (f"sampler '{FLOW}' refused stochastic_sampling=True: list "
                               'assignment index out of range; give another value')

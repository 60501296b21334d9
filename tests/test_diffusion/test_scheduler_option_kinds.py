"""What a diffusers scheduler sampler's option takes, where its default does not say
(review L2): the bool-for-a-number refusal read the type of the default, so a setting
whose default is None was never judged (FlowMatch's shift_terminal=True made sigmas
[1, 1, 1, 1, 1, 0], one jump to data; DPM-Solver's variance_type=True passed); its
annotation says. shift_terminal 1 (diffusers divides by 1 - shift_terminal) is refused;
numpy's bools are bools (lower_order_final=np.True_ was 'not True or False'); a setting
the objective fixes that the chosen scheduler has not is an unknown option, not the
objective's; a step count that is no whole number is said to be that."""
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.diffusion.scheduler_sampling import check_num_steps, check_sample_settings

DPM = 'DPMSolverMultistepScheduler'
FLOW = 'FlowMatchEulerDiscreteScheduler'


def _never_called(x, t, **kwargs):
    raise AssertionError('the model was called before the options were judged')


def _epsilon_model(x, t, **kwargs):
    return 0.1 * x


# ------------------------------------------------------ a None default: its annotation
@pytest.mark.parametrize('objective, sampler, options, message', [
    (Transport, FLOW, dict(shift_terminal=True), r'^shift_terminal=True is not a number'),
    (Transport, FLOW, dict(shift_terminal=np.True_), r'^shift_terminal=np.True_ is not a '),
    (GaussianDiffusion, DPM, dict(variance_type=True),
     rf"^variance_type=True is not one of 'learned', 'learned_range' \(a setting of {DPM}; "
     r'its default: None\): give one of them$'),
    (GaussianDiffusion, DPM, dict(solver_order=np.True_),
     rf'^solver_order=np.True_ is not a whole number \(a setting of {DPM}; its default: '
     r'2\): give a whole number$'),
    (GaussianDiffusion, 'DDIMScheduler', dict(timestep_spacing=False),
     r"^timestep_spacing=False is not one of 'leading', 'trailing', 'linspace' "),
    # (judged by the annotation alone: the objective has no check of its own for them,
    # and diffusers takes True; Transport's shift_terminal is also its own _check_number's)
    (GaussianDiffusion, 'EulerDiscreteScheduler', dict(sigma_min=True),
     r'^sigma_min=True is not a number \(a setting of EulerDiscreteScheduler; its default: '
     r'None\): give a number$'),
    (GaussianDiffusion, 'EulerDiscreteScheduler', dict(sigma_max=True),
     r'^sigma_max=True is not a number \(a setting of EulerDiscreteScheduler; its default: '
     r'None\): give a number$'),
])
def test_a_bool_for_a_setting_that_is_no_switch_is_refused(objective, sampler, options,
                                                            message):
    with pytest.raises(ValueError, match=message):
        objective().sample(_never_called, torch.zeros(1, 4, 2, 2), {}, sampler, 10, **options)
    with pytest.raises(ValueError, match=message):
        check_sample_settings(objective(), dict(sampler=sampler, num_steps=10, **options))


def test_a_number_that_diffusers_annotates_as_bool_still_passes():
    """diffusers annotates UniPC's sigma_max (a number) as bool: a None default is never
    taken as a switch, so a number is not refused as 'not True or False'."""
    GaussianDiffusion().check_sample_options('UniPCMultistepScheduler', 10,
                                             use_karras_sigmas=True, sigma_max=10.0)


# -------------------------------------------------------------------- shift_terminal
def test_shift_terminal_one_is_one_jump_in_diffusers():
    """Why it is refused: 1 - shift_terminal is diffusers' divisor."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift_terminal=1.0)
    with pytest.warns(RuntimeWarning):
        scheduler.set_timesteps(5)
    assert scheduler.sigmas.tolist() == [1, 1, 1, 1, 1, 0]


@pytest.mark.parametrize('value', [1.0, 1, 1.5, -0.2, 0.0, float('nan')])
def test_shift_terminal_outside_0_1_is_refused(value):
    message = (rf'^shift_terminal={value!r} is not a number in \(0, 1\) \(the last sigma '
               r'before 0 .*; LTX-Video: 0.1\)$')
    with pytest.raises(ValueError, match=message):
        Transport().sample(_never_called, torch.zeros(1, 4, 2, 2), {}, FLOW, 5,
                           shift_terminal=value)
    with pytest.raises(ValueError, match=message):
        check_sample_settings(Transport(), dict(sampler=FLOW, num_steps=5,
                                                shift_terminal=value))


def test_shift_terminal_inside_0_1_and_none_pass():
    for value in (0.1, 0.5, None):
        Transport().check_sample_options(FLOW, 5, shift_terminal=value)


# ------------------------------------------------------------------------ numpy's bools
def test_numpy_bools_are_bools_and_reach_diffusers_as_python_bools():
    diffusion = GaussianDiffusion()
    diffusion.check_sample_options(DPM, 10, lower_order_final=np.True_)
    check_sample_settings(diffusion, dict(sampler=DPM, num_steps=10,
                                          lower_order_final=np.False_))
    scheduler = diffusion.build_scheduler(DPM, lower_order_final=np.False_)
    assert scheduler.config.lower_order_final is False
    assert '"lower_order_final": false' in scheduler.to_json_string()  # (np.bool_: no JSON)
    flow = Transport()._flow_match_scheduler(stochastic_sampling=np.False_)
    assert flow.config.stochastic_sampling is False

    def sample(**options):
        noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
        return diffusion.sample(_epsilon_model, noise, {}, DPM, 5, **options)

    torch.testing.assert_close(sample(lower_order_final=np.False_),
                               sample(lower_order_final=False), rtol=0, atol=0)


def test_a_word_for_a_switch_is_still_refused():
    with pytest.raises(ValueError, match=rf"^lower_order_final='true' is not True or False "
                                         rf'\(a switch of {DPM}; its default: True\)$'):
        GaussianDiffusion().check_sample_options(DPM, 10, lower_order_final='true')


# --------------------------------------- the objective's settings the scheduler has not
@pytest.mark.parametrize('sampler', ['DDIMScheduler', 'DDPMScheduler',
                                     'EulerDiscreteScheduler'])
@pytest.mark.parametrize('key', ['use_dynamic_shifting', 'time_shift_type'])
def test_a_fixed_name_the_scheduler_has_not_is_an_unknown_option(sampler, key):
    with pytest.raises(ValueError) as info:
        GaussianDiffusion().check_sample_options(sampler, 10, **{key: False})
    message = str(info.value)
    assert message.startswith(f"sampler '{sampler}' takes no option {key} (its options: "), \
        message
    assert "from the model's objective" not in message


def test_a_fixed_name_the_scheduler_has_is_still_the_objectives():
    with pytest.raises(ValueError, match=rf"^sampler '{DPM}' takes use_dynamic_shifting "
                                         r"from the model's objective"):
        GaussianDiffusion().check_sample_options(DPM, 10, use_dynamic_shifting=False)


# ------------------------------------------------------------------ steps: whole numbers
@pytest.mark.parametrize('num_steps, maximum, message', [
    ('10', None, "num_steps must be a whole number >= 1, got '10'"),
    (2.0, None, 'num_steps must be a whole number >= 1, got 2.0'),
    (True, None, 'num_steps must be a whole number >= 1, got True'),
    (np.True_, None, 'num_steps must be a whole number >= 1, got np.True_'),
    (5.0, 1000, 'num_steps must be a whole number in [1, 1000], got 5.0'),
    (0, None, 'num_steps must be >= 1, got 0'),
    (1001, 1000, 'num_steps must be in [1, 1000], got 1001'),
])
def test_steps_that_are_no_whole_number_are_said_to_be(num_steps, maximum, message):
    with pytest.raises(ValueError) as info:
        check_num_steps(num_steps, 1, maximum)
    assert str(info.value) == message


def test_whole_steps_pass():
    for num_steps in (1, 10, np.int64(7)):
        check_num_steps(num_steps)
    check_num_steps(1000, 1, 1000)

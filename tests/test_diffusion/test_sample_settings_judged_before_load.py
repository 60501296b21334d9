"""Sampling settings judged by the check the tools make before the weights load
(``check_sample_settings``) as the sampling judges them: a ``cfg_scale`` that is not a
finite number (tools/infer.py --cfg-scale nan, a config's '4' or True got through
every pre-check to the weights; only the precision was judged), a bool for a
scheduler setting that is a number (solver_order=True was taken as 1), and the
dynamic shift of DPM-Solver++ on GaussianDiffusion (use_dynamic_shifting=True: no
flow sigmas to shift, ignored without a word)."""
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

import mmsora.diffusion.transport as transport_module
from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.diffusion.scheduler_sampling import check_sample_settings
from mmsora.diffusion.schedulers import scheduler_settings
from mmsora.utils.cli import run_cli
from mmsora.utils.config_keys import check_sample_settings_of
from mmsora.utils.config_loading import load_config
from tests.sit_demo import load_infer
from tests.test_diffusion.test_sampler_values_before_load import DIT_DEMO, refuse_loading

pytestmark = pytest.mark.usefixtures('malloc_calls', 'kept_environ')

DPM = 'DPMSolverMultistepScheduler'
FLOW = 'FlowMatchEulerDiscreteScheduler'
# LatentDiffusion.sample's words (check_cfg_scale)
RULE = 'cfg_scale must be a finite number (the guidance scale; 1: none), got '


def _never_called(*args, **kwargs):
    raise AssertionError('the model was called before the options were checked')


# ------------------------------------------------------------------------------ cfg_scale
@pytest.mark.parametrize('value', ['4', float('nan'), float('inf'), True, None])
@pytest.mark.parametrize('objective, sampler', [(GaussianDiffusion, 'ddim'),
                                                (Transport, 'ode_euler')])
def test_a_cfg_scale_that_is_no_finite_number_is_refused(objective, sampler, value):
    with pytest.raises(ValueError) as info:
        check_sample_settings(objective(), dict(sampler=sampler, num_steps=4, cfg_scale=value))
    assert str(info.value) == f'{RULE}{value!r}'


def test_a_config_cfg_scale_is_judged_with_its_precision():
    """The check of a run's config (tools/infer.py, tools/test.py, tools/train.py):
    precision='fp8' was refused in the same call, cfg_scale '4' passed."""
    model = load_config(DIT_DEMO).model
    for value in ('4', float('nan'), True, None):
        with pytest.raises(ValueError) as info:
            check_sample_settings_of(model, dict(sampler='ddim', cfg_scale=value))
        assert str(info.value) == f'{RULE}{value!r}'
    for value in (4, 1.5, 1, 0):  # (numbers: their floors are the tools')
        check_sample_settings_of(model, dict(sampler='ddim', cfg_scale=value))
    check_sample_settings_of(model, dict(sampler='ddim'))  # (unset: the model's default)


def test_infers_own_floor_comes_first(tmp_path, capsys, monkeypatch):
    """--cfg-scale 0.5 is a number below tools/infer.py's floor: its own message."""
    refuse_loading(monkeypatch)
    code = run_cli(lambda: load_infer().main([
        DIT_DEMO, '--checkpoint', str(tmp_path / 'DiT-XL-2-256x256.pt'), '--out',
        str(tmp_path / 'grid.png'), '--cfg-scale', '0.5']))
    err = capsys.readouterr().err
    assert code == 2 and '--cfg-scale must be >= 1 (1 disables guidance), got 0.5' in err, err


# ------------------------------------------------------------ a bool for a number setting
@pytest.mark.parametrize('objective, sampler, options, number', [
    (GaussianDiffusion, DPM, dict(solver_order=True), 'a whole number'),
    (GaussianDiffusion, 'DDIMScheduler', dict(steps_offset=True), 'a whole number'),
    (GaussianDiffusion, 'UniPCMultistepScheduler', dict(solver_order=False), 'a whole number'),
    (Transport, FLOW, dict(base_shift=True), 'a number'),
])
def test_a_bool_for_a_number_setting_is_refused(objective, sampler, options, number):
    (key, value), = options.items()
    default = scheduler_settings(sampler)[key]  # (diffusers' own)
    message = (rf'^{key}={value} is not {number} \(a setting of {sampler}; its default: '
               rf'{default}\): give {number}$')
    with pytest.raises(ValueError, match=message):
        objective().sample(_never_called, torch.zeros(1, 4, 2, 2), {}, sampler, 10, **options)
    with pytest.raises(ValueError, match=message):
        check_sample_settings(objective(), dict(sampler=sampler, num_steps=10, **options))


def test_numbers_and_switches_still_pass():
    check_sample_settings(GaussianDiffusion(), dict(sampler=DPM, num_steps=10, solver_order=3,
                                                    lower_order_final=False,
                                                    lambda_min_clipped=-5.0))
    check_sample_settings(GaussianDiffusion(), dict(sampler='DDIMScheduler', num_steps=10,
                                                    steps_offset=1, clip_sample=True))
    check_sample_settings(Transport(), dict(sampler=FLOW, num_steps=10, shift=3.0,
                                            stochastic_sampling=True))


# ------------------------------------------------------------------ FlowMatch's steps once
@pytest.mark.parametrize('sampler', [FLOW, 'ode_euler', 'sde_euler'])
def test_transport_checks_the_steps_once(sampler, monkeypatch):
    calls = []
    check = transport_module.check_num_steps

    def counting(*args, **kwargs):
        calls.append(args)
        return check(*args, **kwargs)

    monkeypatch.setattr(transport_module, 'check_num_steps', counting)
    Transport().check_sample_options(sampler, 10)
    assert len(calls) == 1, calls


# ------------------------------------------------- the dynamic shift on GaussianDiffusion
def test_dpm_solvers_dynamic_shift_does_nothing_on_the_betas_sigmas():
    """Why it is refused: on the betas' sigmas (no flow sigmas: the objective's) diffusers'
    DPM-Solver++ steps as without it (its mu is never passed)."""
    default, shifted = (DPMSolverMultistepScheduler(use_dynamic_shifting=flag)
                        for flag in (False, True))
    for scheduler in (default, shifted):
        scheduler.set_timesteps(10)
    assert torch.equal(default.timesteps, shifted.timesteps)
    assert torch.equal(default.sigmas, shifted.sigmas)


@pytest.mark.parametrize('sampler', [DPM, 'UniPCMultistepScheduler'])
@pytest.mark.parametrize('options', [dict(use_dynamic_shifting=True),
                                     dict(time_shift_type='exponential')])
def test_the_dynamic_shift_is_refused_as_the_objectives(sampler, options):
    name = next(iter(options))
    message = (rf"^sampler '{sampler}' takes {name} from the model's objective "
               r"\(GaussianDiffusion's 1000 timesteps, beta_schedule 'linear', no flow "
               r'sigmas or shift, .*\): .* leave it out of the sampler options$')
    with pytest.raises(ValueError, match=message):
        GaussianDiffusion().sample(_never_called, torch.zeros(1, 4, 2, 2), {}, sampler, 10,
                                   **options)
    with pytest.raises(ValueError, match=message):
        check_sample_settings(GaussianDiffusion(), dict(sampler=sampler, num_steps=10,
                                                        **options))
    with pytest.raises(ValueError) as info:  # (nor listed as an option)
        GaussianDiffusion().check_sample_options(sampler, 10, solver_ordr=2)
    assert name not in str(info.value).split('its options: ')[1].split(';')[0]

"""A diffusers scheduler as a sampler takes its constructor's settings as sampler options
(diffusers' ``Scheduler.from_config(config, **kwargs)``): ``--sampler
DPMSolverMultistepScheduler --sampler-options algorithm_type=dpmsolver++ solver_order=2``
said 'takes no option algorithm_type, solver_order (its options: none; ...)', the same
for DDIM's timestep_spacing=trailing (walk-through of a diffusers user). The settings
that make the trained process (betas, timesteps, prediction) stay the objective's."""
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.diffusion.scheduler_sampling import check_sample_settings
from mmsora.utils.cli import run_cli
from tests.sit_demo import load_infer
from tests.test_diffusion.test_sampler_values_before_load import DIT_DEMO, refuse_loading

DPM = 'DPMSolverMultistepScheduler'


def _recording_model(calls):
    """An epsilon model (a linear map of x_t) that records the timesteps it is called at."""
    def model(x, t, **kwargs):
        calls.append(float(t[0]))
        return 0.1 * x
    return model


def _noise():
    return torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))


def _diffusers_loop(scheduler, noise, steps):
    """diffusers' own pipeline loop with the same epsilon model."""
    scheduler.set_timesteps(steps)
    x, calls = noise * scheduler.init_noise_sigma, []
    for t in scheduler.timesteps:
        calls.append(float(t))
        model_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(0.1 * model_in, t, x).prev_sample
    return x, calls


def _dit_betas():
    """DiT's training schedule, as diffusers names it."""
    return dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                beta_schedule='linear', prediction_type='epsilon')


def test_dpm_solver_settings_go_to_the_scheduler():
    diffusion = GaussianDiffusion(learn_sigma=False)
    options = dict(algorithm_type='dpmsolver++', solver_order=2, timestep_spacing='trailing')
    check_sample_settings(diffusion, dict(sampler=DPM, num_steps=10, **options))
    config = diffusion.build_scheduler(DPM, **options).config
    assert {k: config[k] for k in options} == options
    calls = []
    x = diffusion.sample(_recording_model(calls), _noise(), {}, DPM, 10, **options)
    ref, ref_calls = _diffusers_loop(DPMSolverMultistepScheduler(**_dit_betas(), **options),
                                     _noise(), 10)
    assert calls == ref_calls and calls[0] == 999  # (trailing; linspace's is 999 too)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)


def test_non_default_dpm_settings_sample_as_diffusers_does():
    diffusion = GaussianDiffusion(learn_sigma=False)
    options = dict(algorithm_type='dpmsolver', final_sigmas_type='sigma_min', solver_order=3,
                   timestep_spacing='leading', steps_offset=1, use_karras_sigmas=True)
    calls = []
    x = diffusion.sample(_recording_model(calls), _noise(), {}, DPM, 8, **options)
    ref, ref_calls = _diffusers_loop(DPMSolverMultistepScheduler(**_dit_betas(), **options),
                                     _noise(), 8)
    default, _ = _diffusers_loop(DPMSolverMultistepScheduler(**_dit_betas()), _noise(), 8)
    assert calls == pytest.approx(ref_calls)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x, default, atol=1e-3)  # (the settings made a difference)


def test_ddim_samples_on_diffusers_trailing_grid():
    trailing = DDIMScheduler(**_dit_betas(), timestep_spacing='trailing')
    trailing.set_timesteps(10)
    assert trailing.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    calls = []
    GaussianDiffusion().sample(_recording_model(calls), _noise(), {}, 'DDIMScheduler', 10,
                               timestep_spacing='trailing')
    assert calls == trailing.timesteps.tolist()
    calls.clear()  # without it, DiT's (diffusers' leading): 900 down to 0
    GaussianDiffusion().sample(_recording_model(calls), _noise(), {}, 'DDIMScheduler', 10)
    assert calls[0] == 900 and calls[-1] == 0


@pytest.mark.parametrize('option', [
    dict(beta_schedule='linear'), dict(num_train_timesteps=500), dict(beta_end=0.012),
    dict(prediction_type='v_prediction'), dict(rescale_betas_zero_snr=True),
    dict(trained_betas=[0.1] * 1000)])
def test_the_objectives_settings_are_refused_as_its(option):
    calls = []
    name = next(iter(option))
    message = (rf"^sampler '{DPM}' takes {name} from the model's objective "
               r"\(GaussianDiffusion's 1000 timesteps, beta_schedule 'linear', .*\): .* "
               r'leave it out of the sampler options$')
    with pytest.raises(ValueError, match=message):
        GaussianDiffusion().sample(_recording_model(calls), _noise(), {}, DPM, 10, **option)
    assert not calls
    with pytest.raises(ValueError, match=message):
        check_sample_settings(GaussianDiffusion(), dict(sampler=DPM, num_steps=10, **option))


def test_a_typo_of_a_setting_is_hinted():
    with pytest.raises(ValueError, match=r"^sampler 'DPMSolverMultistepScheduler' takes no "
                                         r'option solver_ordr \(its options: algorithm_type, '
                                         r'.*; did you mean solver_order\?$'):
        check_sample_settings(GaussianDiffusion(), dict(sampler=DPM, solver_ordr=2))
    # the objective's settings are not listed as options
    with pytest.raises(ValueError) as info:
        GaussianDiffusion().check_sample_options('DDIMScheduler', 10, etaa=0)
    listed = str(info.value).split('its options: ')[1].split(';')[0]
    assert 'timestep_spacing' in listed and 'beta_schedule' not in listed
    assert 'num_train_timesteps' not in listed and 'prediction_type' not in listed


@pytest.mark.parametrize('sampler, options, message', [
    # a word outside its list (the annotation's), in our words
    (DPM, dict(algorithm_type='nope'),
     r"^algorithm_type='nope' is not one of 'dpmsolver', 'dpmsolver\+\+', .* \(a setting of "
     r"DPMSolverMultistepScheduler; its default: 'dpmsolver\+\+'\): give one of them$"),
    ('DDIMScheduler', dict(timestep_spacing='nope'),
     r"^timestep_spacing='nope' is not one of 'leading', 'trailing', 'linspace' "),
    # a combination the scheduler refuses: both named, the other option not
    (DPM, dict(solver_order=2, use_karras_sigmas=True, use_exponential_sigmas=True),
     r"refused use_karras_sigmas=True, use_exponential_sigmas=True: Only one of .*; "
     r'give other values$'),
    (DPM, dict(algorithm_type='dpmsolver', solver_order=3),
     r"refused algorithm_type='dpmsolver': `final_sigmas_type` zero is not supported .*; "
     r'give another value$'),
    # refused in the scheduler's step only (an IndexError at the first step): in our words
    ('UniPCMultistepScheduler', dict(solver_order=0),
     r'^solver_order must be a whole number >= 1 \(a setting of UniPCMultistepScheduler; '
     r'its default: 2\), got 0$'),
    # a word for a switch: diffusers took 'false' as true
    (DPM, dict(use_karras_sigmas='false'),
     r"^use_karras_sigmas='false' is not True or False \(a switch of "
     r'DPMSolverMultistepScheduler; its default: False\)$'),
    (DPM, dict(variance_type='learned_range'),
     r"^variance_type='learned_range' is not for DPMSolverMultistepScheduler: .* use "
     r"sampler 'ddpm'$"),
])
def test_a_value_the_scheduler_refuses_is_one_line_before_any_model_call(sampler, options,
                                                                          message):
    calls = []
    with pytest.raises(ValueError, match=message) as info:
        GaussianDiffusion().sample(_recording_model(calls), _noise(), {}, sampler, 10,
                                   **options)
    assert not calls and '\n' not in str(info.value)
    with pytest.raises(ValueError, match=message):
        check_sample_settings(GaussianDiffusion(), dict(sampler=sampler, num_steps=10,
                                                        **options))


@pytest.mark.usefixtures('kept_environ')
def test_infer_refuses_a_scheduler_value_before_the_weights_load(tmp_path, capsys,
                                                                 monkeypatch):
    refuse_loading(monkeypatch)
    code = run_cli(lambda: load_infer().main([
        DIT_DEMO, '--checkpoint', str(tmp_path / 'DiT-XL-2-256x256.pt'), '--out',
        str(tmp_path / 'grid.png'), '--sampler', DPM, '--sampler-options',
        'algorithm_type=nope', 'solver_order=2']))
    err = capsys.readouterr().err
    assert code == 2 and err.count('error:') == 1, err
    assert "algorithm_type='nope' is not one of 'dpmsolver'" in err, err
    # good settings, parsed as infer parses them, pass the check: on to the weights
    with pytest.raises(AssertionError, match='the weights were loaded'):
        load_infer().main([
            DIT_DEMO, '--checkpoint', str(tmp_path / 'DiT-XL-2-256x256.pt'), '--out',
            str(tmp_path / 'grid.png'), '--sampler', DPM, '--sampler-options',
            'algorithm_type=dpmsolver++', 'solver_order=3', 'use_karras_sigmas=True',
            'timestep_spacing=trailing'])


def test_flow_match_takes_its_settings_but_invert_sigmas():
    transport = Transport()
    calls = []

    def model(x, t, **kwargs):  # SiT's time: 1 = data
        calls.append(float(t[0]))
        return -x
    transport.sample(model, _noise(), {}, 'FlowMatchEulerDiscreteScheduler', 6,
                     shift=3.0, shift_terminal=0.1)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.1)
    ref.set_timesteps(6)
    assert calls == pytest.approx([1 - float(t) / 1000 for t in ref.timesteps], abs=1e-6)
    assert 1 - calls[-1] == pytest.approx(0.1)  # (shift_terminal: the last noise level)
    with pytest.raises(ValueError, match=r"^sampler 'FlowMatchEulerDiscreteScheduler' takes "
                                         r"invert_sigmas from the model's objective \(the "
                                         r'Linear path from noise at t = 0 to data at t = 1\)'):
        transport.check_sample_options('FlowMatchEulerDiscreteScheduler', 6,
                                       invert_sigmas=True)
    with pytest.raises(ValueError, match=r'takes no option shfit .*did you mean shift\?$'):
        transport.check_sample_options('FlowMatchEulerDiscreteScheduler', 6, shfit=3)


@pytest.mark.parametrize('sampler', ['DDPMScheduler', 'EulerAncestralDiscreteScheduler'])
def test_the_check_leaves_the_global_random_state_alone(sampler):
    """The check steps the scheduler once; a stochastic step's noise must not come from
    torch's global generator (a run seeded with it would sample otherwise)."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    check_sample_settings(GaussianDiffusion(), dict(sampler=sampler, num_steps=10,
                                                    timestep_spacing='trailing'))
    assert torch.equal(torch.get_rng_state(), before)

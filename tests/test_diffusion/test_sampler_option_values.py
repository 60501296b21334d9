"""Sampler options as values (walk-through of a SiT user): an explicit None option
(SiT's last_step=None) reaches the sampler through sample_images and tools/infer.py,
while settings left None fall back to the run's; wrong option values are one-line
ValueErrors before any model call (and in the train-time check of sample_cfg); the
SBDM error names the config key that fixes it."""
import os.path as osp

import pytest
import torch

from mmsora.apis import sample_images
from mmsora.diffusion import Transport
from mmsora.diffusion.scheduler_sampling import check_sample_settings
from mmsora.registry import MODELS
from mmsora.utils.cli import run_cli
from mmsora.utils.config_loading import load_config
# the tiny SiT demo and tools/infer.py, as the other infer tests have them (its
# checkpoint is a fixture of tests/test_diffusion/conftest.py)
from tests.sit_demo import DEMO, TINY, load_infer

TINY_SIT = dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                depth=2, num_heads=2, num_classes=3, learn_sigma=False)


def build_sit():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='LatentDiffusion', denoiser=TINY_SIT,
                              diffusion=dict(type='Transport'), latent_shape=(4, 8, 8),
                              num_classes=3))
    with torch.no_grad():  # leave adaLN-Zero's zero start, so outputs depend on x
        for p in model.denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


# --------------------------------------------------------------------------- #
#                       None as an option's value (finding 1)                  #
# --------------------------------------------------------------------------- #
def test_sample_images_passes_an_explicit_none_option_on():
    """sample_images(..., last_step=None) took the run's 'Mean' last step (5 NFE for 5
    steps, the same samples as last_step='Mean'); the SDE without a last step is 4."""
    model = build_sit()
    model.sample_cfg = dict(sampler='sde_euler', num_steps=5, cfg_scale=1.0,
                            last_step='Tweedie')
    direct = model.sample([0, 2], seeds=[1, 2], sampler='sde_euler', num_steps=5,
                          last_step=None)
    assert model.diffusion.last_nfe == 4
    # num_steps and cfg_scale left None are the run's (5 steps, no guidance)
    ours = sample_images(model, [0, 2], seeds=1, last_step=None, num_steps=None,
                         cfg_scale=None)
    assert model.diffusion.last_nfe == 4
    assert torch.equal(ours, direct)
    mean = sample_images(model, [0, 2], seeds=1, last_step='Mean')
    assert model.diffusion.last_nfe == 5 and not torch.equal(mean, ours)
    sample_images(model, [0], seeds=1)  # the run's Tweedie step
    assert model.diffusion.last_nfe == 5
    # Another sampler drops the run's options, not the ones given with it:
    # sde_heun, 4 steps of 2 evaluations and no last step.
    sample_images(model, [0], seeds=1, sampler='sde_heun', last_step=None)
    assert model.diffusion.last_nfe == 8


def infer(checkpoint, tmp_path, *args, cfg_options=()):
    argv = [DEMO, '--checkpoint', checkpoint, '--num-samples', '2', '--out',
            str(tmp_path / 'grid.png'), *args, '--cfg-options', *TINY, *cfg_options]
    return run_cli(lambda: load_infer().main(argv))


def test_infer_samples_with_last_step_none(checkpoint, tmp_path, capsys):
    code = infer(checkpoint, tmp_path, '--sampler', 'sde_euler', '--steps', '5',
                 '--sampler-options', 'last_step=None')
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert '; 4 model evaluations (NFE) per batch' in captured.out, captured.out


def test_mass_sampling_line_says_the_settings_sampled_with(checkpoint, tmp_path, capsys):
    """infer --out NAME.npz's settings line printed ode_dopri5 with the config's unused
    num_steps and left out last_step=None, which changes the samples."""
    for name, args, shown in (
            ('ode', ('--sampler', 'ode_dopri5'), 'sampler=ode_dopri5, num_steps=adaptive, '),
            ('sde', ('--sampler', 'sde_euler', '--steps', '3', '--sampler-options',
                     'last_step=None'), 'sampler=sde_euler, num_steps=3, cfg_scale=')):
        code = run_cli(lambda: load_infer().main([
            DEMO, '--checkpoint', checkpoint, '--num-samples', '2', '--out',
            str(tmp_path / f'{name}.npz'), *args, '--cfg-options', *TINY]))
        printed = capsys.readouterr()
        assert code == 0, printed.err
        line = next(x for x in printed.out.splitlines() if x.startswith('sampling 2 samples'))
        assert shown in line, line
        assert ('last_step=None' in line) == (name == 'sde'), line


# --------------------------------------------------------------------------- #
#                        Wrong option values (finding 2)                       #
# --------------------------------------------------------------------------- #
BAD_VALUES = [
    ('sde_euler', dict(diffusion_norm='abc'),
     r"^diffusion_norm='abc' is not a number >= 0 \(the scale of the SDE's diffusion; "
     r'SiT: 1\)$'),
    ('sde_euler', dict(diffusion_norm=-1), r'^diffusion_norm=-1 is not a number >= 0 '),
    ('sde_heun', dict(diffusion_norm=float('nan')), r'^diffusion_norm=nan is not a number'),
    ('sde_euler', dict(last_step_size='abc'),
     r"^last_step_size='abc' is not a number in \(0, 1\) \(the size of the 'Mean' last "
     r'step; SiT: 0.04\)$'),
    ('sde_euler', dict(last_step='Euler', last_step_size=1.5),
     r"^last_step_size=1.5 is not a number in \(0, 1\) \(the size of the 'Euler'"),
    ('ode_dopri5', dict(atol='abc'),
     r"^atol='abc' is not a number > 0 \(dopri5's absolute tolerance; SiT: 1e-06\)$"),
    ('ode_dopri5', dict(atol=0, rtol=0), r'^atol=0 is not a number > 0 '),
    ('ode_dopri5', dict(atol=-1), r'^atol=-1 is not a number > 0 '),
    ('ode_dopri5', dict(rtol=True), r"^rtol=True is not a number > 0 \(dopri5's relative"),
    ('FlowMatchEulerDiscreteScheduler', dict(shift=0),
     r"^shift=0 is not a number > 0 \(the scheduler's time shift; SD3: 3\)$"),
    ('FlowMatchEulerDiscreteScheduler', dict(shift='abc'), r"^shift='abc' is not a number"),
    ('FlowMatchEulerDiscreteScheduler', dict(shift=-2), r'^shift=-2 is not a number > 0 '),
]


@pytest.mark.parametrize('sampler, options, message', BAD_VALUES)
def test_wrong_option_values_are_one_line_before_any_model_call(sampler, options, message):
    calls = []
    with pytest.raises(ValueError, match=message):
        Transport().sample(lambda x, t: calls.append(1) or x, torch.randn(2, 3), {}, sampler,
                           10, **options)
    assert not calls
    # the same without sampling: what the train-time check of sample_cfg calls
    with pytest.raises(ValueError, match=message):
        Transport().check_sample_options(sampler, **options)
    with pytest.raises(ValueError, match=message):
        check_sample_settings(Transport(), dict(sampler=sampler, num_steps=10, **options))


def test_good_option_values_pass():
    model = lambda x, t: -x  # noqa: E731
    t = Transport()
    for sampler, options in [('sde_euler', dict(diffusion_norm=0, last_step_size=0.5)),
                             ('sde_euler', dict(last_step=None, last_step_size=0)),
                             ('FlowMatchEulerDiscreteScheduler', dict(shift=3))]:
        t.check_sample_options(sampler, **options)
        assert torch.isfinite(t.sample(model, torch.randn(2, 3), {}, sampler, 4,
                                       **options)).all()
    check_sample_settings(t, dict(sampler='ode_dopri5', atol=1e-4, rtol=1e-3, fps=8))


def test_infer_gives_one_line_for_a_wrong_value(checkpoint, tmp_path, capsys):
    code = infer(checkpoint, tmp_path, '--sampler', 'sde_euler', '--steps', '3',
                 '--sampler-options', 'diffusion_norm=abc')
    err = capsys.readouterr().err
    assert code == 2 and err.count('error:') == 1, err
    assert "diffusion_norm='abc' is not a number >= 0" in err and 'Traceback' not in err


# --------------------------------------------------------------------------- #
#                      The SBDM error names its key (finding 3)                #
# --------------------------------------------------------------------------- #
def test_sbdm_error_names_the_setting_that_fixes_it(checkpoint, tmp_path, capsys):
    args = ('--sampler', 'sde_euler', '--steps', '3', '--sampler-options',
            'diffusion_form=SBDM')
    assert infer(checkpoint, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert ("diffusion_form='SBDM' is infinite at t = 0 on the Linear path: set the "
            "objective's sample_eps > 0 (--cfg-options model.diffusion.sample_eps=1e-3; "
            'in Python Transport(sample_eps=1e-3))') in err, err
    # what it says works
    assert infer(checkpoint, tmp_path, *args,
                 cfg_options=['model.diffusion.sample_eps=1e-3']) == 0, \
        capsys.readouterr().err
    # (it passes, and hands back the steps it checked: sample's default)
    assert Transport(sample_eps=1e-3).check_sample_options(
        'sde_euler', diffusion_form='SBDM') == 250


def test_the_train_time_check_of_sample_cfg_checks_values():
    """train.py's check of sample_cfg (before training) meets a wrong value, not the
    first sampling hook (or tools/infer.py) after it."""
    from mmsora.utils.cli import UserError
    from mmsora.utils.config_keys import _check_sample_cfg
    cfg = load_config(DEMO)
    cfg.sample_cfg = dict(sampler='sde_euler', num_steps=10, diffusion_norm=-1)
    with pytest.raises(UserError, match=r'^sample_cfg: diffusion_norm=-1 is not a number >= 0'):
        _check_sample_cfg(cfg)
    cfg.sample_cfg = dict(sampler='sde_euler', num_steps=10, last_step=None)
    _check_sample_cfg(cfg)


def test_a_diffusers_setting_name_as_a_sampler_option_suggests_ours():
    """infer --sampler-options guidance_scale=4 (diffusers' name) answered 'did you
    mean guidance_channels?' (walk-through s)."""
    from mmsora.diffusion.scheduler_sampling import check_sampler_options
    with pytest.raises(ValueError, match=r'takes no option guidance_scale .*; did you mean '
                                         r'cfg_scale\?$'):
        check_sampler_options('ddim', {'guidance_scale': 4}, ['eta', 'guidance_channels'])
    with pytest.raises(ValueError, match=r'did you mean num_steps for num_inference_steps\?'):
        check_sampler_options('ddim', {'guidance_scale': 4, 'num_inference_steps': 9}, ['eta'])


def test_an_option_none_without_a_none_value_leaves_the_runs(repo_root):
    """sample_images(..., eta=None) kept the run's eta before last_step=None went
    through as a value; it still does (DDIM's eta=None was a TypeError)."""
    from mmsora.apis import init_model
    model, _ = init_model(osp.join(repo_root, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'),
                          checkpoint=False, cfg_options=TINY)
    model.sample_cfg = dict(sampler='ddim', num_steps=2, eta=0.5)
    torch.testing.assert_close(sample_images(model, [0], seeds=1, eta=None, decode=False),
                               sample_images(model, [0], seeds=1, decode=False))

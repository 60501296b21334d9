"""Sampler option values and steps, checked before the weights load by the code the
sampler checks them with: tools/infer.py checked --sampler and the names of
--sampler-options from the config alone, but a wrong value (DDIM's spacing=evn,
eta=-1, eta=abc, --steps 60 on DDIM's stride, Stable Cascade's timesteps=abc, the SDE
samplers' --steps 1) was refused by the sampler once the weights had loaded, and
tools/test.py's evaluation.sample_cfg the same. Here the loading fails loudly: the
message must come first."""
import os.path as osp

import pytest
import torch

import mmsora.apis
from mmsora.diffusion import GaussianDiffusion, Transport, WuerstchenDiffusion
from mmsora.diffusion.scheduler_sampling import check_sample_settings
from mmsora.utils.cli import run_cli
from tests.sit_demo import ROOT, load_infer

DIT_DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
CASCADE_TOY = osp.join(ROOT, 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py')
WUERSTCHEN = 'DDPMWuerstchenScheduler'

pytestmark = pytest.mark.usefixtures('malloc_calls', 'kept_environ')

# (objective, sampler, num_steps, options, the sampler's message)
BAD = [
    (GaussianDiffusion, 'ddim', 10, dict(spacing='evn'),
     r"^sampler 'ddim' takes spacing='stride' \(the DDIM paper's, from t = 0\) or 'even' "
     r".* got 'evn'$"),
    (GaussianDiffusion, 'ddim', 10, dict(eta=-1), r'^eta=-1 is not a number in \[0, 1\] '),
    (GaussianDiffusion, 'ddim', 10, dict(eta=1.5), r'^eta=1.5 is not a number in \[0, 1\] '),
    (GaussianDiffusion, 'ddim', 10, dict(eta='abc'), r"^eta='abc' is not a number in "),
    (GaussianDiffusion, 'ddim', 10, dict(eta=None), r'^eta=None is not a number in '),
    (GaussianDiffusion, 'ddim', 10, dict(eta=True), r'^eta=True is not a number in '),
    (GaussianDiffusion, 'ddim', 60, {},
     r'^DDIM cannot take 60 steps: .* gives 59 or 63 steps; .*spacing=\'even\''),
    (GaussianDiffusion, 'ddpm', 1001, {}, r'^num_steps must be in \[1, 1000\] '),
    (GaussianDiffusion, 'ddpm', 2.5, {},
     r'^num_steps must be a whole number in \[1, 1000\] .* got 2.5$'),
    (Transport, 'sde_euler', 1, {},
     r'^num_steps must be >= 2 \(the SDE samplers count grid points: num_steps - 1 steps\), '
     r'got 1$'),
    (Transport, 'sde_heun', 0, {}, r'^num_steps must be >= 2 \(the SDE samplers .*got 0$'),
    (Transport, 'ode_euler', True, {}, r'^num_steps must be a whole number >= 1, got True$'),
    (GaussianDiffusion, 'ddim', True, {},
     r'^num_steps must be a whole number in \[1, 1000\] .* got True$'),
    (GaussianDiffusion, 'ddpm', 10, dict(clip_denoised='yes'),
     r"^clip_denoised='yes' is not True or False \(clamp the predicted x0 to \[-1, 1\]"),
    (GaussianDiffusion, 'ddim', 10, dict(clip_denoised=1), r'^clip_denoised=1 is not True or '),
    (Transport, 'ode_euler', 0, {}, r'^num_steps must be >= 1, got 0$'),
    (Transport, 'ode_heun', '5', {}, r"^num_steps must be a whole number >= 1, got '5'$"),
    (WuerstchenDiffusion, WUERSTCHEN, 4, dict(timesteps='abc'),
     r"^timesteps='abc': give a list of numbers decreasing to 0 "),
    (WuerstchenDiffusion, WUERSTCHEN, 4, dict(timesteps=0.5),
     r'^timesteps=0.5: give a list of numbers decreasing to 0 '),
    (WuerstchenDiffusion, WUERSTCHEN, 4, dict(timesteps=[1.0, 'x', 0.0]),
     r"^timesteps=\[1.0, 'x', 0.0\]: give a list of numbers decreasing to 0 "),
    (WuerstchenDiffusion, WUERSTCHEN, 0, {}, r'^num_steps must be >= 1, got 0$'),
]


@pytest.mark.parametrize('objective, sampler, num_steps, options, message', BAD)
def test_the_sampler_and_the_check_before_loading_say_the_same(objective, sampler, num_steps,
                                                                options, message):
    calls = []

    def model(x, t, **kwargs):
        calls.append(1)
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match=message):
        objective().sample(model, torch.randn(1, 4, 2, 2), {}, sampler, num_steps, **options)
    assert not calls  # before any model call
    # what tools/infer.py, tools/test.py and tools/train.py check before loading
    with pytest.raises(ValueError, match=message):
        check_sample_settings(objective(), dict(sampler=sampler, num_steps=num_steps,
                                                **options))


def test_good_values_pass_the_check_and_sample():
    def model(x, t, **kwargs):
        return torch.cat([-0.1 * x, torch.zeros_like(x)], 1)  # (learned sigma: 2C)

    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    diffusion = GaussianDiffusion()
    for options in (dict(eta=0), dict(eta=1.0, spacing='even'), dict(spacing='stride')):
        steps = 30 if options.get('spacing') == 'even' else 25
        check_sample_settings(diffusion, dict(sampler='ddim', num_steps=steps, **options))
        assert torch.isfinite(diffusion.sample(model, noise, {}, 'ddim', steps,
                                               **options)).all()
    # steps left unset: the sampler's default (250, a stride of 4)
    check_sample_settings(diffusion, dict(sampler='ddim', eta=0.5))
    check_sample_settings(Transport(), dict(sampler='sde_euler', num_steps=2))
    check_sample_settings(WuerstchenDiffusion(), dict(sampler=WUERSTCHEN, num_steps=0,
                                                      timesteps=[1, 0.5, 0]))


def refuse_loading(monkeypatch):
    """Loading the weights fails loudly: a check after it is too late."""
    def init_model(*args, **kwargs):
        raise AssertionError('the weights were loaded')

    monkeypatch.setattr(mmsora.apis, 'init_model', init_model)


@pytest.mark.parametrize('args, message', [
    (['--sampler', 'ddim', '--sampler-options', 'spacing=evn'],
     "sampler 'ddim' takes spacing='stride' (the DDIM paper's, from t = 0) or 'even'"),
    (['--sampler', 'ddim', '--sampler-options', 'eta=-1'], 'eta=-1 is not a number in [0, 1]'),
    (['--sampler', 'ddim', '--sampler-options', 'eta=abc'],
     "eta='abc' is not a number in [0, 1]"),
    (['--sampler', 'ddim', '--steps', '60'], 'DDIM cannot take 60 steps'),
    (['--steps', '1001'], 'num_steps must be in [1, 1000]'),
    # the config's sample_cfg is ddim: its eta too
    (['--cfg-options', 'sample_cfg.eta=2'], 'eta=2 is not a number in [0, 1]'),
    # a guidance scale that is no finite number (it got through to the weights)
    # named as given: the flag, or the config's sample_cfg (its --cfg-options too)
    (['--cfg-scale', 'nan'], 'error: --cfg-scale must be a finite number (the guidance '
                             'scale; 1: none), got nan'),
    (['--cfg-scale', 'inf', '--cfg-options', 'sample_cfg.cfg_scale=abc'],
     'error: --cfg-scale must be a finite number (the guidance scale; 1: none), got inf'),
    (['--cfg-options', 'sample_cfg.cfg_scale=abc'],
     "error: sample_cfg.cfg_scale must be a finite number (the guidance scale; 1: none), "
     "got 'abc'"),
    (['--cfg-options', 'sample_cfg.cfg_scale=True'],
     'error: sample_cfg.cfg_scale must be a finite number (the guidance scale; 1: none), '
     'got True'),
    (['--cfg-scale', '0.5'], 'error: --cfg-scale must be >= 1 (1 disables guidance), got 0.5'),
])
def test_infer_refuses_a_wrong_value_before_the_weights_load(args, message, tmp_path, capsys,
                                                             monkeypatch):
    refuse_loading(monkeypatch)
    code = run_cli(lambda: load_infer().main([
        DIT_DEMO, '--checkpoint', str(tmp_path / 'DiT-XL-2-256x256.pt'), '--out',
        str(tmp_path / 'grid.png'), *args]))
    err = capsys.readouterr().err
    assert code == 2 and err.count('error:') == 1, err
    assert message in err, err


def test_infer_refuses_stable_cascades_timesteps_before_the_weights_load(tmp_path, capsys,
                                                                         monkeypatch):
    refuse_loading(monkeypatch)
    code = run_cli(lambda: load_infer().main([
        CASCADE_TOY, '--checkpoint', str(tmp_path / 'stage_c.safetensors'), '--prompt',
        'a red ball', '--out', str(tmp_path / 'clips'), '--sampler-options', 'timesteps=abc']))
    err = capsys.readouterr().err
    assert code == 2 and err.count('error:') == 1, err
    assert "timesteps='abc': give a list of numbers decreasing to 0" in err, err


def test_test_tool_refuses_a_wrong_value_before_the_weights_load(tmp_path, capsys,
                                                                 monkeypatch):
    from tests.cli_helpers import load_tool
    refuse_loading(monkeypatch)
    config = tmp_path / 'dit_eval.py'
    config.write_text(f'_base_ = [{DIT_DEMO!r}]\n'
                      'evaluation = dict(num_samples=4, batch_size=2, metrics=[dict('
                      "type='FID', reference='ref.npz')])\n")
    tool = load_tool('test')
    for options, message in (
            (['evaluation.sample_cfg.spacing=evn'], "sampler 'ddim' takes spacing='stride' "),
            (['evaluation.sample_cfg.eta=-0.5'], 'eta=-0.5 is not a number in [0, 1]'),
            (['evaluation.sample_cfg.num_steps=60'], 'DDIM cannot take 60 steps'),
            (['evaluation.sample_cfg.cfg_scale=True'],  # (it got through to the weights)
             'cfg_scale must be a finite number (the guidance scale; 1: none), got True')):
        code = run_cli(lambda: tool.main([str(config), str(tmp_path / 'big.pth'),
                                          '--cfg-options', *options]))
        err = capsys.readouterr().err
        assert code == 2 and err.count('error:') == 1, err
        assert ("error: the evaluation's sampler settings (evaluation.sample_cfg over the "
                f"config's sample_cfg): {message}") in err, err

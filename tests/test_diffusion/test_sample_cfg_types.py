"""A ``sample_cfg`` that is not a dict, and the hint for a sampler's name.

``tools/infer.py RUN --cfg-options sample_cfg=ddim`` said "dictionary update sequence
element #0 has length 1; 2 is required" (a number: "'int' object is not iterable"):
``merge_sample_cfg``, which every tool, hook and API merges sampling settings with,
now refuses such a value in one line naming its key. ``--sampler dpm-solver`` was
answered "did you mean DDPMScheduler?": the hint now reads diffusers', k-diffusion's
and the DiT / SiT repositories' spellings of the schedulers it has."""
import os.path as osp

import pytest
import torch
from mmengine.config import ConfigDict

import mmsora.apis
from mmsora.apis import init_model
from mmsora.diffusion.gaussian import GaussianDiffusion
from mmsora.diffusion.scheduler_sampling import check_sampler_name, merge_sample_cfg
from mmsora.diffusion.transport import Transport
from mmsora.models.latent_diffusion import LatentDiffusion
from mmsora.utils.cli import run_cli
from tests.cli_helpers import load_tool
from tests.tiny_models import DEMO

EXAMPLE = "dict(sampler='ddim', num_steps=50, ...)"


# ------------------------------------------------------------ not a dict
@pytest.mark.parametrize('value, fix', [
    ('ddim', 'sample_cfg.sampler=ddim'),
    ('dpm++', 'sample_cfg.sampler=dpm++'),
    (5, 'sample_cfg.NAME=VALUE for each setting'),
    (['ddim'], 'sample_cfg.NAME=VALUE for each setting'),
    ("{'sampler': 'ddim', 'eta': 0.5}", 'sample_cfg.sampler=ddim sample_cfg.eta=0.5'),
    ('dict(sampler=ddim)', 'sample_cfg.NAME=VALUE for each setting'),
])
def test_a_config_sample_cfg_that_is_no_dict_is_refused_in_one_line(value, fix):
    with pytest.raises(ValueError) as info:
        merge_sample_cfg(value, dict(sampler='ddpm'), num_steps=5)
    assert str(info.value) == (
        f'sample_cfg must be a dict of sampling settings (sample_cfg={EXAMPLE}), got '
        f'{value!r}: give its entries by name, as --cfg-options {fix}')


def test_an_override_is_named_as_its_caller_names_it():
    with pytest.raises(ValueError) as info:
        merge_sample_cfg(dict(sampler='ddim'), 'ddpm',
                         names=('sample_cfg', 'custom_hooks[1].sample_cfg'))
    assert str(info.value) == (
        f'custom_hooks[1].sample_cfg must be a dict of sampling settings '
        f'(custom_hooks[1].sample_cfg={EXAMPLE}), got \'ddpm\': give its entries by '
        'name, as --cfg-options custom_hooks.1.sample_cfg.sampler=ddpm')
    # the base named too (evaluation's section, over the config's)
    with pytest.raises(ValueError, match=r'^evaluation\.sample_cfg must be a dict .*got 7'):
        merge_sample_cfg(7, names=('evaluation.sample_cfg',))


@pytest.mark.parametrize('value, fix', [
    ('ddim', ": give dict(sampler='ddim')"),
    (3.5, ''),
])
def test_an_unnamed_override_is_said_to_be_settings_over_the_config(value, fix):
    """(From Python: evaluate's or a hook's sample_cfg argument.)"""
    with pytest.raises(ValueError) as info:
        merge_sample_cfg(dict(sampler='ddim'), None, value)
    assert str(info.value) == ("sampling settings over the config's sample_cfg must be a "
                               f'dict ({EXAMPLE}), got {value!r}{fix}')


def test_dicts_and_none_merge_as_before():
    base = ConfigDict(sampler='ddim', eta=1.0, num_steps=50, fps=8)
    assert merge_sample_cfg(base, None, ConfigDict(sampler='ddpm'), num_steps=5,
                            cfg_scale=None) == dict(sampler='ddpm', num_steps=5, fps=8)
    assert merge_sample_cfg(None) == {}
    assert merge_sample_cfg(dict(eta=0.5), names=('sample_cfg',),
                            num_steps=3) == dict(eta=0.5, num_steps=3)


# ------------------------------------------------------------ tools/infer.py
TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.latent_shape=[3,8,8]']


def never(*args, **kwargs):
    raise AssertionError('the weights were loaded or sampled before the check')


@pytest.mark.usefixtures('kept_environ')
@pytest.mark.parametrize('given, said, fix', [
    ('sample_cfg=ddim', "'ddim'", 'sample_cfg.sampler=ddim'),
    ('sample_cfg=4', '4', 'sample_cfg.NAME=VALUE for each setting'),
])
def test_infer_refuses_a_sample_cfg_of_the_wrong_type_before_the_weights_load(
        repo_root, tmp_path, capsys, monkeypatch, given, said, fix):
    config = osp.join(repo_root, DEMO)
    model, _ = init_model(config, checkpoint=False, cfg_options=TINY)
    weights = tmp_path / 'dit.pt'
    torch.save(model.denoiser.state_dict(), weights)
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    monkeypatch.setattr(LatentDiffusion, 'sample', never)
    argv = [config, '--checkpoint', str(weights), '--num-samples', '1', '--steps', '2',
            '--out', str(tmp_path / 'samples.png'), '--cfg-options', *TINY, given]
    assert run_cli(lambda: load_tool('infer').main(argv)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'error: sample_cfg must be a dict of sampling settings (sample_cfg={EXAMPLE}), '
        f'got {said}: give its entries by name, as --cfg-options {fix}']
    assert not osp.exists(tmp_path / 'samples.png')


# ------------------------------------------------------------ the sampler's name
GAUSSIAN = GaussianDiffusion().samplers()


@pytest.mark.parametrize('name, meant', [
    # diffusers' words (DPMSolverMultistepScheduler(algorithm_type='dpmsolver++'))
    ('dpm-solver', 'DPMSolverMultistepScheduler'),
    ('dpmsolver++', 'DPMSolverMultistepScheduler'),
    ('dpm++', 'DPMSolverMultistepScheduler'),
    ('dpm_solver_pp', 'DPMSolverMultistepScheduler'),
    ('DPMSolverMultistep', 'DPMSolverMultistepScheduler'),
    ('unipc', 'UniPCMultistepScheduler'),
    ('UniPC', 'UniPCMultistepScheduler'),
    ('euler', 'EulerDiscreteScheduler'),
    ('euler_ancestral', 'EulerAncestralDiscreteScheduler'),
    # k-diffusion's functions and A1111's menu
    ('sample_dpmpp_2m', 'DPMSolverMultistepScheduler'),
    ('DPM++ 2M', 'DPMSolverMultistepScheduler'),
    ('k_euler', 'EulerDiscreteScheduler'),
    ('Euler a', 'EulerAncestralDiscreteScheduler'),
    # the DiT repository's loops stay ours, named first
    ('DDIM', 'ddim, DDIMScheduler'),
    ('DDPM', 'ddpm, DDPMScheduler'),
    ('ddim_scheduler', 'ddim, DDIMScheduler'),
    # a short name: the names close to it, as before
    ('dpm', 'ddpm, DDPMScheduler, DPMSolverMultistepScheduler'),
])
def test_common_spellings_are_hinted_as_the_scheduler_they_mean(name, meant):
    """The names meant come first (the close ones may follow: three at most)."""
    with pytest.raises(ValueError) as info:
        check_sampler_name(name, GAUSSIAN, 'GaussianDiffusion')
    start = (f'unknown sampler {name!r} for GaussianDiffusion; choose one of {GAUSSIAN}; '
             'did you mean ')
    message = str(info.value)
    assert message.startswith(start) and message.endswith('?'), message
    hinted = message[len(start):-1].split(', ')
    assert hinted[:len(meant.split(', '))] == meant.split(', ') and len(hinted) <= 3


@pytest.mark.parametrize('name, meant', [
    ('dopri5', 'ode_dopri5'),  # SiT's --sampling-method under ODE
    ('ODE_Euler', 'ode_euler'),
    ('flow-match', 'FlowMatchEulerDiscreteScheduler'),
    ('FlowMatchEuler', 'FlowMatchEulerDiscreteScheduler'),
])
def test_transport_spellings_are_hinted(name, meant):
    samplers = Transport().samplers()
    with pytest.raises(ValueError, match=rf'; did you mean {meant}(, [^,?]+)*\?$'):
        check_sampler_name(name, samplers, 'Transport')


def test_the_hint_reaches_sampling():
    """Through the objective's check, as tools/infer.py's --sampler meets it."""
    with pytest.raises(ValueError, match=r"^unknown sampler 'dpm-solver' for "
                                         r"GaussianDiffusion; .*; did you mean "
                                         r"DPMSolverMultistepScheduler[,?]"):
        GaussianDiffusion().check_sample_options('dpm-solver')


def test_aliases_are_hints_not_names():
    """A spelling is hinted, never taken: the name stays the registered one."""
    with pytest.raises(ValueError, match='unknown sampler'):
        check_sampler_name('dpm++', GAUSSIAN, 'GaussianDiffusion')
    assert check_sampler_name('DPMSolverMultistepScheduler', GAUSSIAN, 'x') is None

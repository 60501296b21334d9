"""A config's guidance scale (``sample_cfg.cfg_scale``, a hook's or the evaluation's
over it) judged before the run (tools/train.py's check_training_keys) by sampling's
own rule, for every denoiser and every model config (one whose objective does not
build, or not a LatentDiffusion, too): None or '4' stopped the run at a sampling hook's
first samples, or, for a denoiser without forward_with_cfg, was a TypeError of the
guidance check's own message. The model's type is read as MODELS.build reads it: a
scoped 'mmsora.LatentDiffusion' or the class itself had none of its sampling settings
judged (cfg_scale='4', sampler='ddmi' passed train.py's and infer.py's checks)."""
import os.path as osp

import pytest
import torch
from mmengine.model import BaseModel

from mmsora.models.latent_diffusion import LatentDiffusion
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError
from mmsora.utils.config_keys import check_sample_settings_of, check_training_keys
from mmsora.utils.config_loading import load_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
# LatentDiffusion.check_cfg_scale's words, after the key
RULE = 'must be a finite number (the guidance scale; 1: none), got '


class NoGuidanceDenoiserF1(torch.nn.Module):
    """A denoiser of one's own without forward_with_cfg (given as a class: nothing is
    registered)."""


def sampling_config(denoiser=None):
    """The demo config with a sampling hook (the last custom hook), and ``denoiser``
    as its denoiser where given."""
    cfg = load_config(DEMO)
    if denoiser is not None:
        cfg.model.denoiser = dict(type=denoiser)
    cfg.custom_hooks.append(dict(type='SampleVisualizationHook', interval=10))
    return cfg


def refused(cfg) -> str:
    with pytest.raises(UserError) as info:
        check_training_keys(cfg)
    return str(info.value)


@pytest.mark.parametrize('denoiser', [None, NoGuidanceDenoiserF1],
                         ids=['DiT', 'no forward_with_cfg'])
@pytest.mark.parametrize('value', [None, '4', True, float('nan'), float('inf')])
def test_a_config_cfg_scale_that_is_no_number_is_one_line(denoiser, value):
    cfg = sampling_config(denoiser)
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale=value)
    assert refused(cfg) == f'sample_cfg.cfg_scale {RULE}{value!r}'


@pytest.mark.parametrize('denoiser', [None, NoGuidanceDenoiserF1],
                         ids=['DiT', 'no forward_with_cfg'])
def test_a_hooks_own_cfg_scale_is_named_by_its_key(denoiser):
    cfg = sampling_config(denoiser)
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale=1.0)
    i = len(cfg.custom_hooks) - 1
    cfg.custom_hooks[i]['sample_cfg'] = dict(cfg_scale=None)
    assert refused(cfg) == f'custom_hooks[{i}].sample_cfg.cfg_scale {RULE}None'
    cfg.custom_hooks[i]['sample_cfg'] = dict(cfg_scale=1)  # an int is a number
    check_training_keys(cfg)


def test_a_cfg_scale_from_the_command_line_is_judged_too():
    """--cfg-options custom_hooks.2.sample_cfg.cfg_scale=None (to mean: the config's)."""
    cfg = sampling_config()
    i = len(cfg.custom_hooks) - 1
    apply_cfg_options(cfg, [f'custom_hooks.{i}.sample_cfg.cfg_scale=None'],
                      schedule_note=False)
    assert refused(cfg) == f'custom_hooks[{i}].sample_cfg.cfg_scale {RULE}None'


def test_numbers_pass_and_still_meet_the_guidance_check():
    cfg = sampling_config()
    for scale in (4, 1.5, 1):
        cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale=scale)
        check_training_keys(cfg)
    cfg = sampling_config(NoGuidanceDenoiserF1)
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale=4)
    assert refused(cfg).startswith(
        f'custom_hooks[{len(cfg.custom_hooks) - 1}] (SampleVisualizationHook) samples '
        'with guidance (sample_cfg.cfg_scale=4) but model.denoiser NoGuidanceDenoiserF1 '
        'has no forward_with_cfg: set sample_cfg.cfg_scale=1')


def test_a_scale_is_judged_where_the_objective_does_not_build():
    """Sampling judges the scale whatever the objective (LatentDiffusion.sample, and
    sample_images for a model without one): so does the config check, and the guidance
    check meets a number (it met '4': 'Unknown format code 'g''). The sampler is left
    to the model, whose build says why its objective does not build."""
    cfg = sampling_config(NoGuidanceDenoiserF1)
    cfg.model.diffusion = dict(type='NoSuchDiffusionF1')
    cfg.sample_cfg = dict(sampler='ddmi', num_steps=4, cfg_scale='4')
    assert refused(cfg) == f"sample_cfg.cfg_scale {RULE}'4'"
    cfg.sample_cfg = dict(sampler='ddmi', num_steps=4, cfg_scale=1, precision='fp8')
    assert refused(cfg).startswith("sample_cfg: precision='fp8': sampling precisions are ")
    cfg.sample_cfg = dict(sampler='ddmi', num_steps=4, cfg_scale=1)
    check_training_keys(cfg)


class OwnModelF1(BaseModel):
    """A model of one's own, no LatentDiffusion (given as a class: nothing is
    registered)."""


@pytest.mark.parametrize('value', ['4', float('nan'), None])
def test_a_model_of_ones_own_has_its_scale_and_precision_judged(value):
    model = dict(type=OwnModelF1)
    with pytest.raises(ValueError) as info:
        check_sample_settings_of(model, dict(cfg_scale=value))
    assert str(info.value) == f'cfg_scale {RULE}{value!r}'
    with pytest.raises(ValueError, match="^precision='fp8': sampling precisions are "):
        check_sample_settings_of(model, dict(precision='fp8'))
    check_sample_settings_of(model, dict(cfg_scale=4, sampler='anything', steps=3))


class OwnLatentDiffusionF1(LatentDiffusion):
    """A LatentDiffusion of one's own (given as a class: nothing is registered)."""


@pytest.mark.parametrize('kind', ['mmsora.LatentDiffusion', LatentDiffusion,
                                  OwnLatentDiffusionF1],
                         ids=['scoped', 'class', 'subclass'])
def test_the_models_type_is_read_as_its_build_reads_it(kind):
    """Only type='LatentDiffusion' had its sampling settings judged: a scoped name or
    the class (which MODELS.build builds alike) let cfg_scale='4' and sampler='ddmi'
    through to the first samples."""
    cfg = sampling_config()
    cfg.model.type = kind
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale='4')
    assert refused(cfg) == f"sample_cfg.cfg_scale {RULE}'4'"
    with pytest.raises(ValueError) as info:
        check_sample_settings_of(cfg.model, dict(cfg_scale='4'))
    assert str(info.value) == f"cfg_scale {RULE}'4'"
    cfg.sample_cfg = dict(sampler='ddmi', num_steps=4, cfg_scale=4)
    assert refused(cfg).startswith("sample_cfg: unknown sampler 'ddmi' for GaussianDiffusion")
    with pytest.raises(ValueError, match="^unknown sampler 'ddmi' for GaussianDiffusion"):
        check_sample_settings_of(cfg.model, dict(sampler='ddmi'))
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale=4)
    check_training_keys(cfg)

"""What a user's own modules (a package listed in custom_imports, a denoiser, a
dataset) meet: a custom_imports of the wrong shape, a config without default_scope, a
denoiser with other parameter names, float64 latents, a label table without the null
row, a scoped type with a typo and a mim-style ``_base_``."""
import os
import sys

import pytest
import torch
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope, Registry
from torch import nn

from mmsora.models import LatentDiffusion
from mmsora.registry import MODELS
from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config
from mmsora.utils.error_messages import explain_error, unknown_type_message

TINY_DIT = dict(type='DiT', input_size=8, patch_size=2, in_channels=3, hidden_size=32,
                depth=2, num_heads=2, mlp_ratio=2.0, class_dropout_prob=0.1, num_classes=4,
                learn_sigma=False)


def tiny_model(denoiser=TINY_DIT, **kwargs):
    torch.manual_seed(0)
    return LatentDiffusion(
        denoiser=denoiser, diffusion=dict(type='GaussianDiffusion', learn_sigma=False),
        latent_shape=(3, 8, 8), num_classes=4, **kwargs)


@pytest.fixture
def own_package(tmp_path, monkeypatch):
    """A package of one's own, ``PKG.mod`` setting ``LOADED``, importable from
    tmp_path; forgotten afterwards."""
    package = f'myidea_{tmp_path.name}'.replace('-', '_')
    (tmp_path / package).mkdir()
    (tmp_path / package / '__init__.py').write_text('LOADED = True\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield package
    for name in [name for name in sys.modules if name.split('.')[0] == package]:
        del sys.modules[name]


# ---------------------------------------------------------------- custom_imports
@pytest.mark.parametrize('shape', ["['{}']", "'{}'"])
def test_custom_imports_as_a_list_or_string_are_the_imports(own_package, tmp_path, shape):
    """``custom_imports = ['myidea']`` was AttributeError: 'list' object has no
    attribute 'get'."""
    config = tmp_path / 'cfg.py'
    config.write_text(f'custom_imports = {shape.format(own_package)}\nmodel = dict()\n')
    load_config(str(config))
    assert sys.modules[own_package].LOADED


def test_custom_imports_with_an_unknown_key_is_refused_by_name(own_package, tmp_path):
    """``dict(import_modules=[...])`` imported nothing: the type was then 'unknown, list
    the module in custom_imports', which the user had done."""
    config = tmp_path / 'cfg.py'
    config.write_text(f"custom_imports = dict(import_modules=['{own_package}'])\n")
    with pytest.raises(UserError, match=r"^custom_imports: unknown key 'import_modules'; "
                                        r'did you mean imports\? its keys are '
                                        r"imports=\['mypkg.mymodule'\] and "
                                        r'allow_failed_imports=False$'):
        load_config(str(config))
    assert own_package not in sys.modules


# ---------------------------------------------------------------- default_scope
def test_a_config_without_default_scope_is_told_to_set_it():
    """Built from mmengine's root registry (no default_scope), LatentDiffusion was
    'unknown ... in the model registry; it is registered in the model registry'."""
    with DefaultScope.overwrite_default_scope('mmengine'):
        with pytest.raises(KeyError) as info:
            ROOT_MODELS.build(dict(type='LatentDiffusion', denoiser=TINY_DIT))
    message = explain_error(info.value)
    assert message == ("unknown type 'LatentDiffusion' in the mmengine::model registry: "
                       "the config has no default_scope; set default_scope = 'mmsora' (or "
                       'inherit configs/_base_/default_runtime.py)')
    # a scope of one's own is not said to be missing (it was: 'has no default_scope')
    assert unknown_type_message('LatentDiffusion', 'model', scope='myproj') == (
        "unknown type 'LatentDiffusion' in the myproj::model registry: default_scope is "
        "'myproj', whose registry does not reach mmsora's; set default_scope = 'mmsora' (or "
        'inherit configs/_base_/default_runtime.py)')


def test_a_type_registered_elsewhere_is_still_named():
    with pytest.raises(KeyError) as info:
        MODELS.build(dict(type='GaussianDiffusion'))
    assert explain_error(info.value).endswith('it is registered in the diffusion registry')


# ---------------------------------------------------------------- denoiser signature
class DiffusersStyle(nn.Module):
    """forward(hidden_states, timestep, class_labels), as diffusers' models."""

    def __init__(self):
        super().__init__()
        self.in_channels, self.num_classes = 3, 4
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, hidden_states, timestep, class_labels):
        return self.conv(hidden_states)


class TakesKwargs(DiffusersStyle):

    def forward(self, x, t, **kwargs):
        return self.conv(x)


def test_a_denoiser_without_the_y_keyword_is_refused_when_built():
    """It failed at the first step: forward() got an unexpected keyword argument 'y'."""
    with pytest.raises(ValueError, match=r'^model.denoiser: DiffusersStyle.forward\('
                                         r'hidden_states, timestep, class_labels\) does '
                                         r'not take the keyword y: LatentDiffusion calls '
                                         r'it as forward\(x, t, y=...\); name its '
                                         r'parameters so \(or take \*\*kwargs\)$'):
        tiny_model(denoiser=dict(type=DiffusersStyle))


def test_a_denoiser_taking_kwargs_trains():
    model = tiny_model(denoiser=dict(type=TakesKwargs))
    loss = model.loss(latents=torch.randn(2, 3, 8, 8), labels=torch.tensor([0, 1]))['loss']
    assert torch.isfinite(loss)


class GuidedOtherwise(TakesKwargs):

    def forward_with_cfg(self, x, t, y, scale):
        return self.forward(x, t)


def test_forward_with_cfg_is_checked_when_guided_not_when_built():
    """A forward_with_cfg of other parameter names refused the config at build time
    (review): a run that only trains, or samples with cfg_scale=1, needs none."""
    model = tiny_model(denoiser=dict(type=GuidedOtherwise))
    assert torch.isfinite(model.loss(latents=torch.randn(2, 3, 8, 8),
                                     labels=torch.tensor([0, 1]))['loss'])
    assert model.sample([0, 1], sampler='ddim', num_steps=2, cfg_scale=1.0).shape == (
        2, 3, 8, 8)
    with pytest.raises(ValueError, match=r'GuidedOtherwise.forward_with_cfg\(x, t, y, scale\) '
                                         r'does not take the keyword cfg_scale'):
        model.sample([0, 1], sampler='ddim', num_steps=2, cfg_scale=2.0)


# ---------------------------------------------------------------- latents dtype
def test_float64_latents_are_cast_to_float32():
    """numpy's float64 reached the first convolution: 'Input type (double) and bias
    type (float) should be the same'."""
    model = tiny_model()
    latents, labels = torch.randn(2, 3, 8, 8), torch.tensor([0, 3])
    torch.manual_seed(1)
    expected = model.loss(latents=latents, labels=labels)['loss']
    torch.manual_seed(1)
    got = model.loss(latents=latents.double(), labels=labels)['loss']
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_float16_latents_still_train():
    model = tiny_model()
    loss = model.loss(latents=torch.randn(2, 3, 8, 8).half(), labels=torch.tensor([0, 1]))
    assert loss['loss'].dtype == torch.float32 and torch.isfinite(loss['loss'])


# ---------------------------------------------------------------- null label
class NoNullRow(nn.Module):
    """A label table of num_classes rows: no row for guidance's null label."""

    def __init__(self):
        super().__init__()
        self.in_channels, self.num_classes = 3, 4
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.table = nn.Embedding(4, 3)

    def forward(self, x, t, y):
        return self.conv(x) + self.table(y)[:, :, None, None]

    def forward_with_cfg(self, x, t, y, cfg_scale):
        cond, uncond = self.forward(x, t, y).chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([guided, guided])


def test_guidance_without_a_null_row_says_so():
    """It ended in IndexError: index out of range in self."""
    model = tiny_model(denoiser=dict(type=NoNullRow))
    with pytest.raises(ValueError, match=r'^NoNullRow cannot sample with guidance '
                                         r'\(cfg_scale=2.0\): the null label is '
                                         r'num_classes=4, and its label table has no row '
                                         r'for it .*num_classes \+ 1 rows .*cfg_scale=1'):
        model.sample([0, 1], sampler='ddim', num_steps=2, cfg_scale=2.0)
    assert model.sample([0, 1], sampler='ddim', num_steps=2).shape == (2, 3, 8, 8)


def test_a_dit_without_label_dropout_is_refused_before_sampling():
    model = tiny_model(denoiser=dict(TINY_DIT, class_dropout_prob=0.0))
    with pytest.raises(ValueError, match=r'num_classes=4, and its label table \(y_embedder'
                                         r'\) has 4 rows: give the table'):
        model.sample([0, 1], sampler='ddim', num_steps=2, cfg_scale=2.0)
    guided = tiny_model().sample([0, 1], sampler='ddim', num_steps=2, cfg_scale=2.0)
    assert guided.shape == (2, 3, 8, 8)


# ---------------------------------------------------------------- scoped types, mim bases
def test_a_typo_in_a_scoped_type_gets_close_names():
    scope = 'contracts_myproj'
    registry = ROOT_MODELS._search_child(scope) or Registry(
        'model', parent=ROOT_MODELS, scope=scope)
    registry.register_module(name='ScopedDenoiser', module=DiffusersStyle, force=True)
    try:
        with pytest.raises(KeyError) as info:
            MODELS.build(dict(type=f'{scope}.ScopedDenoser'))
        assert explain_error(info.value) == (
            f"unknown type '{scope}.ScopedDenoser' in the model registry; did you mean "
            f'{scope}.ScopedDenoiser?')
    finally:  # (the root registry is the session's: the scope goes again)
        ROOT_MODELS._children.pop(scope, None)


def test_a_mim_style_base_is_told_to_give_a_path(tmp_path):
    config = tmp_path / 'cfg.py'
    config.write_text("_base_ = ['mmsora::dit/dit_tiny2_1xb32_1500_shapes16.py']\n")
    with pytest.raises(UserError, match=r"mmengine does not support to load mmsora config.* "
                                        r'give the path of the config file, relative to '
                                        r"your config's folder or absolute"):
        load_config(str(config))
    assert os.path.exists(config)

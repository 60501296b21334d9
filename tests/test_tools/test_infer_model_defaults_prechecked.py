"""tools/infer.py checks a config that leaves ``model.latent_shape`` (or
``model.num_classes``) to the model class's default before the weights load, as the
model's build takes it (LatentDiffusion's (4, 32, 32) and 1000 classes): the pre-check
read ``model.latent_shape`` alone, returned for such a config, and every check (the
frame axis, --out, the prompts, the sampler settings, the checkpoint's objective) waited
for the weights."""
import os.path as osp

import pytest
import torch

import mmsora.apis
from mmsora.apis import init_model
from mmsora.models.latent_diffusion import LatentDiffusion
from mmsora.registry import MODELS
from mmsora.utils.cli import UserError, run_cli
from mmsora.utils.config_keys import model_setting
from mmsora.utils.config_loading import load_config
from tests.cli_helpers import load_tool
from tests.tiny_models import TINY_VAE, VIDEO_DEMO

pytestmark = pytest.mark.usefixtures('kept_environ')

# a 2-block DiT of width 32 on LatentDiffusion's default latents (4, 32, 32), patch 8;
# neither latent_shape nor num_classes given (DiT's and the model's 1000 classes); a
# random tiny VAE (built from its config) decodes the latents (without one, infer
# refuses 4-channel latents before the weights load)
CONFIG = f"""model = dict(
    type='LatentDiffusion',
    denoiser=dict(type='DiT', input_size=32, patch_size=8, in_channels=4,
                  hidden_size=32, depth=2, num_heads=2, learn_sigma=True),
    diffusion=dict(type='GaussianDiffusion', learn_sigma=True),
    vae=dict(type='AutoencoderKLWrapper', config={TINY_VAE!r}),
)
"""


def never(*args, **kwargs):
    raise AssertionError('the weights were loaded or sampled before the check')


@pytest.fixture
def run(tmp_path):
    """``(config, weights)``: a config without latent_shape and num_classes, and a DiT
    file of its denoiser's (random) weights."""
    config = tmp_path / 'defaults.py'
    config.write_text(CONFIG)
    model, _ = init_model(str(config), checkpoint=False)
    assert model.latent_shape == (4, 32, 32) and model.num_classes == 1000
    weights = tmp_path / 'dit.pt'
    torch.save(model.denoiser.state_dict(), weights)
    return str(config), str(weights)


def infer(config, weights, tmp_path, *args):
    """tools/infer.py on ``config``: its exit status."""
    argv = [config, '--checkpoint', weights, '--num-samples', '1', '--steps', '2',
            '--out', str(tmp_path / 'samples.png'), *args]
    return run_cli(lambda: load_tool('infer').main(argv))


@pytest.mark.parametrize('args, said', [
    (['--sampler', 'ddmi'], "unknown sampler 'ddmi' for GaussianDiffusion; "),
    (['--fps', '12'], '--fps: for video models; this model makes pictures '),
    (['--labels', '1000'], '--labels '),  # (the default 1000 classes: 0 to 999)
    (['--prompt', 'a cat'], '--prompt / --prompt-file are for text-conditioned models'),
], ids=['sampler', 'video-option', 'label', 'prompt'])
def test_a_config_without_latent_shape_is_checked_before_the_weights_load(
        run, tmp_path, capsys, monkeypatch, args, said):
    config, weights = run
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    monkeypatch.setattr(LatentDiffusion, 'sample', never)
    assert infer(config, weights, tmp_path, *args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {said}'), err
    assert not osp.exists(tmp_path / 'samples.png')


def test_a_config_without_latent_shape_passes_the_checks_it_meets(run, tmp_path,
                                                                  monkeypatch):
    """The pre-check refuses nothing the defaults take (class 999 of 1000): the weights
    load next."""
    class Loading(Exception):
        pass

    def loading(*args, **kwargs):
        raise Loading

    config, weights = run
    monkeypatch.setattr(mmsora.apis, 'init_model', loading)
    with pytest.raises(Loading):
        load_tool('infer').main([config, '--checkpoint', weights, '--labels', '999',
                                 '--sampler', 'ddim', '--out', str(tmp_path / 'a.png')])


def test_a_clip_denoiser_without_latent_shape_is_refused_the_default_picture_shape():
    """A VideoDiT under LatentDiffusion's default (4, 32, 32), which has no frame axis:
    the shape is named as the model's default, not as given."""
    model = load_config(osp.join(osp.dirname(osp.dirname(osp.dirname(
        osp.abspath(__file__)))), VIDEO_DEMO)).model
    model.pop('latent_shape')
    with pytest.raises(UserError, match=(
            r"^model\.latent_shape \[4, 32, 32\] \(not given: the model's default\) has "
            r"no frame axis, but this run's denoiser VideoDiT makes clips: give it as "
            r'\(C, T, H, W\), model\.latent_shape=\[4,T,32,32\] with T latent frames$')):
        load_tool('infer').check_frame_axis(model, video=False)


class OwnDiffusionModelF7(LatentDiffusion):
    """A subclass that hands its keywords on (registered by the test, then removed)."""

    def __init__(self, extra: int = 1, **kwargs):
        super().__init__(**kwargs)


class OwnShapeModelF7(LatentDiffusion):
    """A subclass with a default of its own."""

    def __init__(self, latent_shape=(4, 2, 8, 8), **kwargs):
        super().__init__(latent_shape=latent_shape, **kwargs)


@pytest.fixture
def own_model():
    MODELS.register_module(module=OwnDiffusionModelF7)
    yield 'OwnDiffusionModelF7'
    MODELS._module_dict.pop('OwnDiffusionModelF7', None)


def test_model_setting_takes_the_default_as_the_build_finds_the_class(own_model):
    assert model_setting(dict(type='LatentDiffusion', latent_shape=[3, 8, 8]),
                         'latent_shape') == [3, 8, 8]
    for kind in ('LatentDiffusion', 'mmsora.LatentDiffusion', LatentDiffusion, own_model):
        assert model_setting(dict(type=kind), 'latent_shape') == (4, 32, 32)
        assert model_setting(dict(type=kind), 'num_classes') == 1000
    assert model_setting(dict(type=OwnShapeModelF7), 'latent_shape') == (4, 2, 8, 8)
    for entry, key in ((dict(type='NoSuchModelF7'), 'latent_shape'),  # (the build says)
                       (dict(), 'latent_shape'),
                       (dict(type='LatentDiffusion'), 'denoiser'),  # (no default)
                       (dict(type='LatentDiffusion'), 'no_such_argument')):
        with pytest.raises(KeyError):
            model_setting(entry, key)

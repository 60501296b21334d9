"""The instance layer's check of the sampling settings (check_run_sample_settings)
follows the config's (config_keys.check_sample_settings_of): a run's
sample_cfg.progress (a key sample_images passes itself) was a TypeError ('got multiple
values for keyword argument'), where the config's check refused it in one line. A
model without an objective (or mass_sample's own sample_fn) has precision judged as
cfg_scale is: 'fp8' was handed on."""
import pytest
import torch

from mmsora.apis import mass_sample, sample_images
from mmsora.registry import MODELS
from mmsora.utils.config_keys import check_sample_settings_of

DENOISER = dict(type='DiT', input_size=4, patch_size=2, in_channels=3, hidden_size=32,
                depth=1, num_heads=2, num_classes=3, learn_sigma=True)
MODEL = dict(type='LatentDiffusion', denoiser=DENOISER, latent_shape=(3, 4, 4),
             num_classes=3)


def run_model(**sample_cfg):
    torch.manual_seed(0)
    model = MODELS.build(MODEL).eval()
    model.sample_cfg = dict(sampler='ddim', num_steps=2, **sample_cfg)
    return model


@pytest.mark.parametrize('key, value', [('progress', True), ('noise', None),
                                        ('labels', [1])])
def test_a_run_key_the_caller_passes_is_refused_as_the_config_check_refuses_it(key, value):
    settings = dict(sampler='ddim', num_steps=2, **{key: value})
    with pytest.raises(ValueError) as config_error:
        check_sample_settings_of(dict(MODEL), settings)
    with pytest.raises(ValueError) as run_error:
        sample_images(run_model(**{key: value}), [0])
    assert str(run_error.value) == str(config_error.value)
    assert str(run_error.value).startswith(f"sampler 'ddim' takes no option {key} ")


def test_seeds_in_a_run_sample_cfg_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r'^seeds: not a sampling setting \(the tools'):
        sample_images(run_model(seeds=[3]), [0])


class NoObjective(torch.nn.Module):
    """A model of one's own: a ``sample`` and no objective (``diffusion``)."""

    def __init__(self):
        super().__init__()
        self.got = []

    def sample(self, labels=None, seeds=None, progress=False, **kwargs):
        self.got.append(kwargs)
        return torch.zeros(len(labels), 3, 4, 4)


def test_without_an_objective_precision_is_judged_as_cfg_scale_is(tmp_path):
    model = NoObjective()
    with pytest.raises(ValueError, match=r"^precision='fp8': sampling precisions are "):
        sample_images(model, [0], precision='fp8')
    assert model.got == []
    assert sample_images(model, [0], precision='bf16').shape == (1, 3, 4, 4)
    assert model.got == [dict(precision='bf16')]
    calls = []
    out = tmp_path / 'samples.npz'
    with pytest.raises(ValueError, match=r"^precision='fp8': sampling precisions are "):
        mass_sample(None, 2, [0], out=str(out), progress=False, precision='fp8',
                    sample_fn=lambda seeds, **kw: calls.append(kw))
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_without_an_objective_a_key_the_caller_passes_is_refused():
    model = NoObjective()
    model.sample_cfg = dict(progress=True)
    with pytest.raises(ValueError, match=r'^progress: not a sampling setting'):
        sample_images(model, [0])
    assert model.got == []


@pytest.mark.parametrize('key, said', [
    ('seeds', r'^seeds: not a sampling setting \(the tools'),
    ('progress', r"^sampler 'ddim' takes no option progress")])
def test_a_config_sample_cfg_with_a_key_the_callers_pass_is_refused(key, said):
    """The config's check (train.py, infer.py, test.py) refuses what sample_images
    refuses: a sample_cfg.seeds passed the objective's check (a setting's name there)
    and tools/infer.py then met seeds twice (a TypeError)."""
    model = dict(type='LatentDiffusion', diffusion=dict(type='GaussianDiffusion'))
    with pytest.raises(ValueError, match=said):
        check_sample_settings_of(model, dict(sampler='ddim', num_steps=4, **{key: 1}))
    check_sample_settings_of(model, dict(sampler='ddim', num_steps=4))

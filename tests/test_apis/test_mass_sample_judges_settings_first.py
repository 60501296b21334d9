"""mass_sample judges its sampling settings as sample_images does, before it writes
anything (review L1): a NaN cfg_scale or a misspelt sampler was refused only after the
run's record (``{out}.parts/run.json``) and ``labels.txt`` were written, and the record
then refused the corrected rerun ('holds the shards of a different sampling run'); one
check both call (check_run_sample_settings). Without a model, a sample_fn of one's own
gets its settings as given, None included (SiT's last_step=None is a value)."""
import functools

import numpy as np
import pytest
import torch

import mmsora.models.latent_diffusion as latent_diffusion
from mmsora.apis import mass_sample, sample_images
from mmsora.registry import MODELS


def run_model():
    """A tiny pixel-space LatentDiffusion (pictures without a VAE) with a run's
    sample_cfg as init_model sets it."""
    torch.manual_seed(0)
    denoiser = dict(type='DiT', input_size=4, patch_size=2, in_channels=3, hidden_size=32,
                    depth=1, num_heads=2, num_classes=3, learn_sigma=True)
    model = MODELS.build(dict(type='LatentDiffusion', denoiser=denoiser,
                              latent_shape=(3, 4, 4), num_classes=3)).eval()
    model.sample_cfg = dict(sampler='ddim', num_steps=2)
    return model


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob('*'))


@pytest.mark.parametrize('bad, message', [
    (dict(cfg_scale=float('nan')), r'^cfg_scale must be a finite number .*got nan$'),
    (dict(sampler='ddmi'), r"^unknown sampler 'ddmi' for GaussianDiffusion; .*ddim"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, bad, message):
    model = run_model()
    out, files = tmp_path / 'ms' / 'samples.npz', tmp_path / 'ms' / 'dir'
    out.parent.mkdir()
    with pytest.raises(ValueError, match=message):
        mass_sample(model, 4, [0, 1], batch_size=2, out=str(out), sample_dir=str(files),
                    progress=False, num_steps=2, **dict(dict(cfg_scale=4.0), **bad))
    assert files_under(tmp_path / 'ms') == []
    # the corrected rerun is not refused by a record of the refused one
    mass_sample(model, 4, [0, 1], batch_size=2, out=str(out), sample_dir=str(files),
                progress=False, num_steps=2, cfg_scale=4.0)
    with np.load(out) as data:
        assert data['arr_0'].shape == (4, 4, 4, 3)
    assert not (tmp_path / 'ms' / 'samples.npz.parts').exists()
    assert (files / 'labels.txt').read_text() == '0\n1\n0\n1\n'


def test_without_a_model_the_cfg_scale_is_judged_before_anything_is_written(tmp_path):
    calls = []
    out = tmp_path / 'samples.npz'
    with pytest.raises(ValueError, match=r'^cfg_scale must be a finite number .*got inf$'):
        mass_sample(None, 2, [0], out=str(out), sample_dir=str(tmp_path / 'dir'),
                    progress=False, cfg_scale=float('inf'),
                    sample_fn=lambda seeds, **kw: calls.append(kw))
    assert calls == [] and files_under(tmp_path) == []


def test_without_a_model_sample_fn_gets_the_settings_as_given(tmp_path):
    got = []

    def sample_fn(seeds, labels, **kwargs):
        got.append(kwargs)
        return torch.zeros(len(seeds), 3, 4, 4)

    given = dict(cfg_scale=None, guidance=None, last_step=None, num_steps=5, my_option=3)
    mass_sample(None, 2, [0], batch_size=2, progress=False, sample_fn=sample_fn, **given)
    assert got == [given]
    # with a model, None is still the run's setting (sample_images' merge)
    got.clear()
    mass_sample(run_model(), 2, [0], batch_size=2, progress=False, sample_fn=sample_fn,
                cfg_scale=None, num_steps=None)
    assert got == [dict(sampler='ddim', num_steps=2, precision=None)]


class NoObjective(torch.nn.Module):
    """A model of one's own: a ``sample`` and no objective (``diffusion``)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def sample(self, labels=None, seeds=None, progress=False, **kwargs):
        self.calls += 1
        return torch.zeros(len(labels), 3, 4, 4)


def test_sample_images_judges_cfg_scale_once_and_without_an_objective(monkeypatch):
    judged = []
    check = latent_diffusion.check_cfg_scale
    monkeypatch.setattr(latent_diffusion, 'check_cfg_scale',
                        lambda scale: (judged.append(scale), check(scale))[1])
    model = run_model()
    judged_at_sampling = []
    sample = model.sample

    @functools.wraps(sample)
    def counting_sample(*args, **kwargs):
        judged_at_sampling.append(len(judged))
        return sample(*args, **kwargs)

    monkeypatch.setattr(model, 'sample', counting_sample)
    sample_images(model, [0], cfg_scale=4.0)
    # once before the first batch (twice before: a check of its own, then the objective's)
    assert judged_at_sampling == [1]
    with pytest.raises(ValueError, match=r'^cfg_scale must be a finite number .*got nan$'):
        sample_images(model, [0], cfg_scale=float('nan'))
    assert judged_at_sampling == [1]
    model = NoObjective()
    with pytest.raises(ValueError, match=r"^cfg_scale must be a finite number .*got '4'$"):
        sample_images(model, [0], cfg_scale='4')
    assert model.calls == 0
    assert sample_images(model, [0, 1], cfg_scale=4.0).shape == (2, 3, 4, 4)

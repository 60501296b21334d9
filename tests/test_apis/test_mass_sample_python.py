"""mass_sample called from Python as a notebook calls it (walk-through G3): a model from
init_model samples with its run's sample_cfg, as tools/infer.py --out NAME.npz does (it
drew unguided DDPM-250); a text model's labels may be None; an out that is not an .npz
is refused (an .npz archive was written under it)."""
import os.path as osp

import numpy as np
import pytest
import torch

import mmsora.apis.mass_sampling as mass_sampling
from mmsora.apis import init_model, mass_sample, sample_plan
from tests.conftest import REPO_ROOT
from tests.tiny_models import DEMO, TINY_DEMO_OPTIONS
from tools import infer

pytestmark = pytest.mark.usefixtures('malloc_calls')


def fake_sample(seeds, labels=None, prompts=None, **kwargs):
    """Pictures that depend only on each sample's seed, like LatentDiffusion's."""
    assert (labels is None) != (prompts is None)
    return torch.stack([torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(s)) * 2 - 1
                        for s in seeds])


def test_mass_sample_draws_what_infer_saves(tmp_path, weights, monkeypatch):
    config = osp.join(REPO_ROOT, DEMO)
    records = []  # each run's record (its settings), as the shard folder gets it
    claim = mass_sampling._claim_parts_dir
    monkeypatch.setattr(mass_sampling, '_claim_parts_dir',
                        lambda parts, fingerprint, rank: (records.append(fingerprint),
                                                          claim(parts, fingerprint, rank)))
    model, cfg = init_model(config, weights, cfg_options=TINY_DEMO_OPTIONS)
    assert model.sample_cfg == dict(cfg.sample_cfg)  # DDIM 50, guidance 2
    ours = str(tmp_path / 'python.npz')
    mass_sample(model, 4, [0, 1, 2, 3], seed=0, out=ours, progress=False)
    assert model.diffusion.last_nfe == 50  # (was 250: DDPM, no guidance)
    theirs = str(tmp_path / 'infer.npz')
    infer.main([config, '--checkpoint', weights, '--labels', '0', '1', '2', '3', '--out',
                theirs, '--cfg-options', *TINY_DEMO_OPTIONS])
    with np.load(ours) as a, np.load(theirs) as b:
        assert np.array_equal(a['arr_0'], b['arr_0'])
        assert np.array_equal(a['arr_1'], b['arr_1'])
    assert records[0] == records[1]  # the same run: either resumes the other's shards
    # Settings given win over the run's; another sampler drops the run's sampler
    # options (DDPM refused DDIM's eta); a model without sample_cfg: as before.
    mass_sample(model, 1, [0], num_steps=5, progress=False)
    assert model.diffusion.last_nfe == 5
    model.sample_cfg['eta'] = 0.5
    mass_sample(model, 1, [0], sampler='ddpm', num_steps=4, progress=False)
    assert model.diffusion.last_nfe == 4
    model.sample_cfg = None
    mass_sample(model, 1, [0], num_steps=3, progress=False)
    assert model.diffusion.last_nfe == 3


def test_text_model_labels_may_be_none(tmp_path):
    # Alike with labels None, [] or infer's [0] (a text model's one class).
    for labels in (None, []):
        assert sample_plan(3, labels, prompts=['a', 'b']) == sample_plan(3, [0],
                                                                          prompts=['a', 'b'])
    out = str(tmp_path / 'text.npz')
    mass_sample(None, 2, None, prompts=['a red bike'], out=out, sample_fn=fake_sample,
                progress=False)
    with np.load(out) as data:
        assert list(data['prompts']) == ['a red bike'] * 2
    with pytest.raises(ValueError, match=r'^labels=None: give the class ids'):
        sample_plan(2, None)


def test_an_out_that_is_not_an_npz_is_refused(tmp_path):
    def never(**kwargs):
        raise AssertionError('sampled before the out was checked')

    out = str(tmp_path / 'x.png')
    with pytest.raises(ValueError, match=r"^out='.*x\.png': mass_sample writes one \.npz "
                                         r"archive .*give out='NAME\.npz'"):
        mass_sample(None, 2, [0], out=out, sample_fn=never, progress=False)
    assert not list(tmp_path.iterdir())  # no x.png, no x.png.parts


def test_labels_that_are_not_class_ids_are_refused():
    """sample_plan cut 1.5 to class 1 (review ag: the one place left after c9cc070)."""
    with pytest.raises(ValueError, match=r'^labels \[1.5\] are not class ids'):
        sample_plan(2, [1.5])
    assert sample_plan(2, [3.0])['labels'] == [3, 3]


class RunModel(torch.nn.Module):
    """A model of a run (its sample_cfg) that takes LatentDiffusion.sample's settings."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.sample_cfg = dict(sampler='ddim', num_steps=50, cfg_scale=2.0, eta=0.0, fps=4)

    def sample(self, labels=None, sampler=None, num_steps=None, cfg_scale=1.0, decode=True,
               precision=None, **sampler_kwargs):
        raise AssertionError('not sampled')


def test_one_merge_for_sample_images_and_mass_sample():
    """mass_sample's merge is sample_images' (run_sample_settings; it had its own entry
    point over it), keeping the settings given as None that its run record holds."""
    from mmsora.apis.inference import run_sample_settings
    assert not hasattr(mass_sampling, 'with_run_sample_cfg')
    model = RunModel()
    given = dict(sampler=None, num_steps=None, cfg_scale=None, decode=None, eta=None)
    merged = dict(sampler='ddim', num_steps=50, cfg_scale=2.0, eta=0.0, precision=None)
    assert run_sample_settings(model, given) == merged  # (the run's fps is for saving)
    assert run_sample_settings(model, given, keep_unset=True) == dict(merged, decode=None)
    assert run_sample_settings(model, dict(given, sampler='ddpm', num_steps=4),
                               keep_unset=True) == dict(sampler='ddpm', num_steps=4,
                                                        cfg_scale=2.0, precision=None,
                                                        decode=None)
    model.sample_cfg = None  # a model of one's own, or a sample_fn: as given
    assert run_sample_settings(model, given, keep_unset=True) == given
    assert run_sample_settings(None, given, keep_unset=True) == given
    assert run_sample_settings(model, given) == {}

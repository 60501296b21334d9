"""mass_sample takes its settings and prompts as sample_images does (review G2): a
cfg_scale=None the run does not set reached LatentDiffusion.sample and was refused
(sample_images takes the run's setting); one prompt str was cut into its characters,
prompts=3 was 'object of type int has no len()'; a set of prompts gave caption i in
the order of its hashes, which changes from one process to the next."""
import json

import numpy as np
import pytest
import torch

import mmsora.apis.mass_sampling as mass_sampling
from mmsora.apis import mass_sample, sample_images, sample_plan
from mmsora.apis.mass_sampling import to_uint8_samples
from mmsora.models.latent_diffusion import prompt_list
from mmsora.registry import MODELS


def run_model():
    """A tiny pixel-space LatentDiffusion (3 channels: pictures without a VAE) with a
    run's sample_cfg as init_model sets it, which does not set cfg_scale."""
    torch.manual_seed(0)
    denoiser = dict(type='DiT', input_size=4, patch_size=2, in_channels=3, hidden_size=32,
                    depth=1, num_heads=2, num_classes=3, learn_sigma=True)
    model = MODELS.build(dict(type='LatentDiffusion', denoiser=denoiser,
                              latent_shape=(3, 4, 4), num_classes=3)).eval()
    for p in model.denoiser.parameters():  # (DiT's zero-initialised output layers)
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    model.sample_cfg = dict(sampler='ddim', num_steps=2)
    return model


def test_a_setting_none_is_the_runs_in_mass_sample_as_in_sample_images(tmp_path,
                                                                        monkeypatch):
    records = []
    claim = mass_sampling._claim_parts_dir
    monkeypatch.setattr(mass_sampling, '_claim_parts_dir',
                        lambda parts, fingerprint, rank: (records.append(fingerprint),
                                                          claim(parts, fingerprint, rank)))
    model = run_model()
    want = to_uint8_samples(sample_images(model, [0, 1], seeds=0, cfg_scale=None))
    out = str(tmp_path / 'a.npz')
    mass_sample(model, 2, [0, 1], batch_size=2, out=out, progress=False, cfg_scale=None,
                num_steps=None, decode=None)
    assert model.diffusion.last_nfe == 2  # the run's DDIM 2, unguided
    with np.load(out) as data:
        assert np.array_equal(data['arr_0'], want)
    # The run's record still holds the settings given as None (as before: a rerun of
    # the same call resumes the shards of the one before)
    kwargs = json.loads(records[0])['sample_kwargs']
    assert kwargs == dict(sampler="'ddim'", num_steps='2', cfg_scale='None',
                          decode='None')
    # and one given wins
    mass_sample(model, 2, [0, 1], batch_size=2, progress=False, cfg_scale=1.0,
                num_steps=3)
    assert model.diffusion.last_nfe == 3


def test_a_model_without_sample_cfg_takes_its_defaults_for_none():
    model = run_model()
    model.sample_cfg = None
    want = to_uint8_samples(sample_images(model, [2], seeds=4, sampler='ddim', num_steps=2))
    got = []
    mass_sample(model, 1, [2], seed=4, progress=False, sampler='ddim', num_steps=2,
                cfg_scale=None, evaluator=Collect(got))
    assert np.array_equal(got[0], want[0])


class Collect:
    """An evaluator that keeps the samples it is fed."""

    def __init__(self, into):
        self.into = into

    def process(self, data_samples):
        self.into.extend(d['sample'] for d in data_samples)

    def evaluate(self, size):
        return {}


def fake_sample(seeds, labels=None, prompts=None, **kwargs):
    return torch.zeros(len(seeds), 3, 4, 4)


def test_one_prompt_str_is_one_caption_in_mass_sample(tmp_path):
    seen = []
    out = str(tmp_path / 'text.npz')
    mass_sample(None, 4, None, batch_size=4, prompts='a red bike', out=out, progress=False,
                sample_fn=lambda prompts, **kw: (seen.extend(prompts),
                                                 fake_sample(prompts=prompts, **kw))[1],
                sample_dir=str(tmp_path / 'files'))
    assert seen == ['a red bike'] * 4
    with np.load(out) as data:
        assert list(data['prompts']) == ['a red bike'] * 4
    assert (tmp_path / 'files' / 'prompts.txt').read_text() == 'a red bike\n' * 4
    assert sample_plan(2, None, 0, 'a cat')['prompts'] == ['a cat', 'a cat']


@pytest.mark.parametrize('prompts, message', [
    (3, r"^prompts must be a list of captions \(str\), one per sample .*got 3$"),
    ([], r'^prompts is empty: give one caption per sample$'),
    (['a cat', 3], r'^prompts\[1\] is 3, not a caption'),
    ({'a cat', 'a dog'}, r'^prompts is a set, whose order changes from one run to the '
                         r"next \(caption i is sample i's\): give a list, e\.g\. "
                         r'sorted\(prompts\)$'),
])
def test_prompts_are_checked_in_sample_plan_as_in_sample_images(prompts, message):
    with pytest.raises(ValueError, match=message):
        sample_plan(2, None, 0, prompts)


def test_unordered_prompts_are_refused_and_ordered_ones_taken():
    for prompts in ({'a', 'b'}, frozenset({'a', 'b'})):
        with pytest.raises(ValueError, match=r'^prompts is a (frozen)?set, whose order '):
            prompt_list(prompts)
    # a dict's keys keep their order; a generator, a tuple, numpy str too
    assert prompt_list(dict(b=1, a=2).keys()) == ['b', 'a']
    assert prompt_list(p for p in ('b', 'a')) == ['b', 'a']
    assert prompt_list(('b', 'a')) == prompt_list(np.array(['b', 'a'])) == ['b', 'a']


def test_the_evaluation_record_keeps_one_prompt_str_whole():
    from mmsora.apis.evaluation import evaluation_record
    record = evaluation_record(None, {}, dict(metrics=[], prompts='a red bike'))
    assert record['prompts'] == ['a red bike']

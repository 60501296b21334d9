"""FID / IS / FVD / CLIP score metrics as mmengine BaseMetrics, with tiny extractors."""
import numpy as np
import pytest
import torch

import tests.test_evaluation.tiny_extractors  # noqa: F401  (registers them)
from mmsora.evaluation import FID, FVD, CLIPScore, InceptionScore, frechet_distance
from mmsora.evaluation import feature_stats, inception_score
from mmsora.registry import METRICS
from tests.tiny_models import make_tiny_clip

TINY = dict(type='TinyImageExtractor')


def pictures(n, seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def feed(metric, samples, order=None, batch=3):
    """Process samples in batches, in the given index order, like several ranks would."""
    order = list(range(len(samples))) if order is None else order
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        metric.process(None, [dict(index=i, sample=samples[i]) for i in idx])
    return metric.evaluate(len(samples))


def tiny_features(samples):
    from tests.test_evaluation.tiny_extractors import TinyImageExtractor
    x = torch.from_numpy(samples).permute(0, 3, 1, 2)
    return {k: v.numpy() for k, v in TinyImageExtractor()(x).items()}


def test_fid_against_reference_samples_is_cached_and_order_free(tmp_path):
    ref, gen = pictures(40, 0), pictures(30, 1)
    np.savez(tmp_path / 'ref.npz', arr_0=ref)
    fid = METRICS.build(dict(type='FID', extractor=TINY, reference=str(tmp_path / 'ref.npz'),
                             inception_score=True, split_size=10))
    result = feed(fid, gen)
    expected = frechet_distance(*feature_stats(tiny_features(gen)['features']),
                                *feature_stats(tiny_features(ref)['features']))
    assert result['FID'] == pytest.approx(expected, rel=1e-6) and result['FID'] > 0
    assert result['IS'] == pytest.approx(
        inception_score(tiny_features(gen)['logits'], 10)[0], rel=1e-6)
    cache = tmp_path / 'ref_TinyImageExtractor_stats.npz'
    assert cache.is_file()
    # Same value in any processing order; the cache is read, not recomputed.
    stamp = cache.stat().st_mtime_ns
    shuffled = list(np.random.default_rng(0).permutation(len(gen)))
    assert feed(fid, gen, shuffled)['FID'] == result['FID']
    assert cache.stat().st_mtime_ns == stamp
    # A reference made again at the same path is read afresh (the cache was kept and
    # gave the old reference's FID)
    np.savez(tmp_path / 'ref.npz', arr_0=pictures(40, 5))
    again = METRICS.build(dict(type='FID', extractor=TINY, reference=str(tmp_path / 'ref.npz')))
    assert feed(again, gen)['FID'] != pytest.approx(result['FID'], rel=1e-3)
    assert cache.stat().st_mtime_ns != stamp


def test_fid_of_the_reference_itself_is_zero(tmp_path):
    ref = pictures(50, 2)
    np.savez(tmp_path / 'ref.npz', arr_0=ref)
    fid = FID(extractor=TINY, reference=str(tmp_path / 'ref.npz'))
    assert abs(feed(fid, ref)['FID']) < 1e-6


def test_fid_of_fewer_samples_than_features_warns(tmp_path, monkeypatch):
    """8 samples and a 6-item reference gave FID 6e-12 with only scipy's 'singular
    matrix' warning (a smoke test's count read as a result)."""
    import mmsora.evaluation.metrics.frechet as frechet
    logged = []
    monkeypatch.setattr(frechet, 'print_log', lambda msg, **kw: logged.append(msg))
    np.savez(tmp_path / 'ref.npz', arr_0=pictures(50, 2))
    feed(FID(extractor=TINY, reference=str(tmp_path / 'ref.npz')), pictures(8, 3))
    assert [m for m in logged if m.startswith('FID of 8 samples in 8 feature dimensions: '
                                              'their covariance is singular')]
    logged.clear()
    feed(FID(extractor=TINY, reference=str(tmp_path / 'ref.npz')), pictures(9, 3))
    assert not [m for m in logged if 'singular' in m]
    # a reference of as few items is said too (its statistics are as singular)
    np.savez(tmp_path / 'small.npz', arr_0=pictures(8, 2))
    feed(FID(extractor=TINY, reference=str(tmp_path / 'small.npz')), pictures(9, 3))
    assert [m for m in logged if m.startswith(f'FID: the reference {tmp_path}/small.npz '
                                              'holds 8 samples in 8 feature dimensions: '
                                              'its covariance is singular')], logged


def test_fid_reads_adm_style_statistics_and_checks_input(tmp_path):
    gen = pictures(20, 3)
    feats = tiny_features(gen)['features']
    np.savez(tmp_path / 'stats.npz', mu=feats.mean(0) + 1, sigma=np.cov(feats, rowvar=False))
    fid = FID(extractor=TINY, reference=str(tmp_path / 'stats.npz'))
    assert feed(fid, gen)['FID'] == pytest.approx(feats.shape[1], rel=1e-6)  # |1|^2 * dim
    clips = np.zeros((2, 3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match='FID takes pictures'):
        fid.process(None, [dict(index=i, sample=c) for i, c in enumerate(clips)])
    fid.process(None, [dict(index=0, sample=gen[0]), dict(index=0, sample=gen[1])])
    with pytest.raises(ValueError, match='evaluated twice'):
        fid.evaluate(2)
    missing = FID(extractor=TINY, reference=str(tmp_path / 'nope.npz'))
    missing.process(None, [dict(index=i, sample=gen[i]) for i in range(3)])
    with pytest.raises(FileNotFoundError, match='nope.npz'):
        missing.evaluate(3)


def test_inception_score_metric():
    gen = pictures(12, 4)
    result = feed(InceptionScore(extractor=TINY, split_size=6), gen)
    mean, std = inception_score(tiny_features(gen)['logits'], 6)
    assert result == dict(IS=pytest.approx(mean), IS_std=pytest.approx(std))
    assert result['IS'] > 1


def test_fvd_on_clips(tmp_path):
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 256, (20, 4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / 'ref.npz', arr_0=ref)
    fvd = FVD(extractor=dict(type='TinyVideoExtractor'), reference=str(tmp_path / 'ref.npz'))
    assert abs(feed(fvd, ref)['FVD']) < 1e-6
    shifted = np.clip(ref.astype(int) + 60, 0, 255).astype(np.uint8)
    assert feed(fvd, shifted)['FVD'] > 1e-3
    with pytest.raises(ValueError, match='FVD takes clips'):
        fvd.process(None, [dict(index=0, sample=ref[0, 0])])


def test_clip_score_on_pictures_and_clips(tmp_path):
    pytest.importorskip('transformers')
    from mmsora.evaluation import CLIPEmbedder
    from mmsora.evaluation.functional import clip_score
    path = make_tiny_clip(tmp_path / 'clip')
    embedder = CLIPEmbedder(path)
    prompts = ['a red disk', 'a green square', 'a blue ring']  # words it knows
    images = pictures(3, 6, size=20)
    expected = clip_score(
        embedder.encode_images(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy(),
        embedder.encode_texts(prompts).numpy())
    metric = CLIPScore(extractor=dict(type='CLIPEmbedder', pretrained_path=path))
    metric.process(None, [dict(index=i, sample=images[i], prompt=prompts[i]) for i in range(3)])
    assert metric.evaluate(3)['CLIPScore'] == pytest.approx(expected.mean(), rel=1e-5)
    # A clip of three identical frames scores as its frame.
    clips = np.repeat(images[:, None], 3, axis=1)             # (3, T=3, 20, 20, 3)
    metric.process(None, [dict(index=i, sample=clips[i], prompt=prompts[i]) for i in range(3)])
    assert metric.evaluate(3)['CLIPScore'] == pytest.approx(expected.mean(), rel=1e-4)
    with pytest.raises(ValueError, match='needs a prompt'):
        metric.process(None, [dict(index=0, sample=images[0], prompt=None)])


@pytest.mark.parametrize('name', ['fid50k_imagenet256', 'fvd2048_ucf101', 'clip_score_t2v'])
def test_evaluation_snippets_build(repo_root, name):
    import inspect

    from mmsora.apis import build_evaluator, evaluate_model
    from mmsora.utils.config_loading import load_config
    evaluation = load_config(f'{repo_root}/configs/_base_/evaluation/{name}.py').evaluation
    assert set(evaluation) <= set(inspect.signature(evaluate_model).parameters)
    evaluator = build_evaluator(evaluation.metrics)  # extractors are built on first use
    assert [type(m).__name__ for m in evaluator.metrics] == [
        m['type'] for m in evaluation.metrics]


def test_reference_content_is_checked_before_the_sampling(tmp_path):
    """A reference of clips for FID, or statistics of another extractor, were found
    only after every sample was drawn (hours, for FID-50K)."""
    clips = tmp_path / 'clips.npz'
    np.savez(clips, arr_0=np.zeros((2, 3, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r'clips.npz: arr_0 is uint8 \(2, 3, 8, 8, 3\), but '
                                         'FID takes a reference of uint8 pictures'):
        FID(extractor=TINY, reference=str(clips)).check_inputs()
    FVD(extractor=dict(type='TinyVideoExtractor'), reference=str(clips)).check_inputs()
    junk = tmp_path / 'junk.npz'
    junk.write_bytes(b'not a zip')
    with pytest.raises(ValueError, match='cannot read the reference .*junk.npz: not an .npz'):
        FID(extractor=TINY, reference=str(junk)).check_inputs()
    other = tmp_path / 'other.npz'
    np.savez(other, mu=np.zeros(400), sigma=np.eye(400))
    fid = FID(extractor=TINY, reference=str(other))
    fid.check_inputs()
    with pytest.raises(ValueError, match='holds statistics of 400 features, but the '
                                         'TinyImageExtractor extractor gives'):
        fid.process(None, [dict(index=0, sample=pictures(1, 0)[0])])


def test_unreadable_statistics_cache_is_computed_again(tmp_path, monkeypatch):
    """A cache holding text stopped the run after all the sampling ('This file contains
    pickled (object) data'); now it is recomputed, as a stale one is, with a warning."""
    import mmsora.evaluation.metrics.frechet as frechet
    logged = []
    monkeypatch.setattr(frechet, 'print_log', lambda msg, **kw: logged.append(msg))
    ref, gen = pictures(20, 0), pictures(20, 1)
    np.savez(tmp_path / 'ref.npz', arr_0=ref)
    cache = tmp_path / 'ref_TinyImageExtractor_stats.npz'
    cache.write_text('not statistics')
    fid = FID(extractor=TINY, reference=str(tmp_path / 'ref.npz'))
    expected = frechet_distance(*feature_stats(tiny_features(gen)['features']),
                                *feature_stats(tiny_features(ref)['features']))
    assert feed(fid, gen)['FID'] == pytest.approx(expected, rel=1e-6)
    assert [m for m in logged if m.startswith(
        f'FID: cannot read the cached reference statistics {cache} (')
        and m.endswith('); computing them again') and '\n' not in m]
    with np.load(cache) as data:  # written again, whole
        assert data['mu'].shape == (8,)


def test_sample_size_is_checked_at_the_first_batch(tmp_path):
    """Where the model's output size is not known before sampling (a VAE that
    compresses time), the first batch is checked against the reference."""
    np.savez(tmp_path / 'clips.npz', arr_0=np.zeros((3, 16, 8, 8, 3), np.uint8))
    fvd = FVD(extractor=dict(type='TinyVideoExtractor'), reference=str(tmp_path / 'clips.npz'))
    fvd.check_inputs(num_samples=4, sample_size=(None, 8, 8))
    with pytest.raises(ValueError, match='clips.npz holds 16-frame 8x8 clips, but the samples '
                                         'are 4-frame 8x8 ones'):
        fvd.process(None, [dict(index=0, sample=np.zeros((4, 8, 8, 3), np.uint8))])


def test_reference_of_another_key_is_a_one_line_error(tmp_path):
    """Read without check_inputs (a metric used on its own), the reference of another
    key gave a KeyError (a traceback in the tools)."""
    from mmsora.utils.error_messages import explain_error
    np.savez(tmp_path / 'other.npz', images=pictures(3, 0))
    fid = FID(extractor=TINY, reference=str(tmp_path / 'other.npz'))
    fid.process(None, [dict(index=i, sample=s) for i, s in enumerate(pictures(3, 1))])
    with pytest.raises(ValueError, match=r"has neither statistics \(mu, sigma\) nor "
                                         r"samples \(arr_0\); it has \['images'\]") as info:
        fid.evaluate(3)
    assert explain_error(info.value).endswith("it has ['images']: save the samples as "
                                              'arr_0 (tools/make_reference.py does)')


def test_random_labels_are_drawn_as_dits_sample_ddp_draws_them(repo_root, monkeypatch):
    """fid50k_imagenet256.py claimed DiT's protocol but cycled the classes (exactly 50
    of each); DiT's sample_ddp.py draws each sample's class uniformly (config audit).
    labels='random' draws them from the seed alone (any number of processes alike)."""
    import mmsora.apis.evaluation as evaluation
    from mmsora.apis import init_model
    from tests.tiny_models import TINY_DEMO_OPTIONS
    model, _ = init_model(f'{repo_root}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py',
                          checkpoint=False, cfg_options=TINY_DEMO_OPTIONS)
    taken = []
    monkeypatch.setattr(evaluation, 'mass_sample',
                        lambda model, n, labels, **kwargs: taken.append(labels) or
                        dict(metrics={}))
    monkeypatch.setattr(evaluation, 'build_evaluator', lambda metrics: None)
    monkeypatch.setattr(evaluation, 'check_metric_inputs', lambda *args: None)
    for seed in (0, 0, 1):
        evaluation.evaluate_model(model, [], num_samples=400, seed=seed, labels='random')
    first, again, other = taken
    assert first == again != other and len(first) == 400
    counts = np.bincount(first, minlength=4)
    assert set(first) == {0, 1, 2, 3} and counts.min() != counts.max()  # not cycled
    evaluation.evaluate_model(model, [], num_samples=8)
    assert taken[-1] == [0, 1, 2, 3]  # the default: each class in turn
    with pytest.raises(ValueError, match="evaluation.labels: a list of classes, or 'random'"):
        evaluation.evaluate_model(model, [], num_samples=8, labels='shuffle')

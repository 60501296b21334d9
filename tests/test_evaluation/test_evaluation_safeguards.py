"""Failures that used to come after all the sampling, or not at all: an unwritable
statistics cache, a reference read whole into memory, ADM references with arr_0 beside
their statistics, metrics reporting the same name, NaN samples, grayscale models."""
import zipfile

import numpy as np
import pytest
import torch

import tests.test_evaluation.tiny_extractors  # noqa: F401  (registers them)
from mmsora.evaluation import FID, InceptionScore, feature_stats, frechet_distance
from tests.test_evaluation.test_metrics import TINY, feed, pictures, tiny_features


@pytest.fixture
def logged(monkeypatch):
    """The messages the Frechet metrics log."""
    import mmsora.evaluation.metrics.frechet as frechet
    messages = []
    monkeypatch.setattr(frechet, 'print_log', lambda msg, **kw: messages.append(msg))
    return messages


def expected_fid(gen, ref):
    return frechet_distance(*feature_stats(tiny_features(gen)['features']),
                            *feature_stats(tiny_features(ref)['features']))


def test_unwritable_statistics_cache_warns_and_the_metric_is_still_computed(tmp_path, logged,
                                                                            monkeypatch):
    """The cache was written inside compute_metrics, after all the sampling: an
    OSError there (a read-only data folder, a path through a file) ended the run
    without its value."""
    import mmsora.evaluation.metrics.frechet as frechet
    ref, gen = pictures(20, 0), pictures(20, 1)
    np.savez(tmp_path / 'ref.npz', arr_0=ref)
    (tmp_path / 'afile').write_text('a file, not a folder')
    cache = tmp_path / 'afile' / 'stats.npz'
    fid = FID(extractor=TINY, reference=str(tmp_path / 'ref.npz'), reference_cache=str(cache))
    fid.check_inputs(num_samples=20, sample_size=(8, 8))  # warned, not refused
    early = [m for m in logged if m.startswith('FID: the reference statistics cannot be '
                                               f'cached at {cache} ({tmp_path}/afile is a '
                                               'file, not a folder)')]
    assert len(early) == 1 and '\n' not in early[0], logged
    logged.clear()
    assert feed(fid, gen)['FID'] == pytest.approx(expected_fid(gen, ref), rel=1e-6)
    late = [m for m in logged
            if m.startswith(f'FID: cannot cache the reference statistics in {cache} (')]
    assert len(late) == 1 and '\n' not in late[0], logged
    assert not cache.exists()
    # a writable place: no warning before the sampling
    logged.clear()
    writable = FID(extractor=TINY, reference=str(tmp_path / 'ref.npz'),
                   reference_cache=str(tmp_path / 'new' / 'stats.npz'))
    writable.check_inputs()
    assert not [m for m in logged if 'cannot be cached' in m]
    # a read-only folder (root writes anywhere: as the file system would say it) that
    # holds a current cache already: nothing to write, nothing to say
    monkeypatch.setattr(frechet, '_unwritable_reason', lambda path: 'it is not writable')
    writable.check_inputs()
    assert [m for m in logged if 'cannot be cached' in m]
    logged.clear()
    writable.reference_stats()  # (made while the folder could be written)
    writable.check_inputs()
    assert not [m for m in logged if 'cannot be cached' in m], logged


def test_stored_npz_members_are_memory_mapped(tmp_path):
    """np.load(mmap_mode='r') ignores mmap_mode for an .npz and reads arr_0 whole (a
    30 GB clip reference on one process)."""
    from mmsora.apis.mass_sampling import zip_npy_files
    from mmsora.evaluation.metrics.frechet import npz_array
    clips = np.random.default_rng(0).integers(0, 256, (5, 3, 4, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / 'stored.npz', arr_0=clips, other=np.arange(3.0))
    np.savez_compressed(tmp_path / 'compressed.npz', arr_0=clips)
    np.save(tmp_path / 'arr_0.npy', np.asfortranarray(clips))
    zip_npy_files(str(tmp_path / 'zipped.npz'), {'arr_0.npy': str(tmp_path / 'arr_0.npy')})
    # np.savez writes a zip64 extra field into the local header only: the data offset
    # must come from the local header, not the central directory's lengths
    with zipfile.ZipFile(tmp_path / 'stored.npz') as archive:
        info = archive.getinfo('arr_0.npy')
    with open(tmp_path / 'stored.npz', 'rb') as f:
        f.seek(info.header_offset + 28)
        assert int.from_bytes(f.read(2), 'little') != len(info.extra)
    for name in ('stored.npz', 'zipped.npz'):
        got = npz_array(str(tmp_path / name), 'arr_0')
        assert isinstance(got, np.memmap) and not got.flags.writeable
        np.testing.assert_array_equal(got, clips)
    np.testing.assert_array_equal(npz_array(str(tmp_path / 'stored.npz'), 'other'),
                                  np.arange(3.0))
    got = npz_array(str(tmp_path / 'compressed.npz'), 'arr_0')
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, clips)


def test_reference_statistics_are_the_same_from_a_mapped_or_compressed_reference(
        tmp_path, monkeypatch):
    ref = pictures(30, 3)
    np.savez(tmp_path / 'stored.npz', arr_0=ref)
    np.savez_compressed(tmp_path / 'compressed.npz', arr_0=ref)
    read_whole = []  # arrays np.load's NpzFile read whole
    getitem = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, '__getitem__',
                        lambda self, key: read_whole.append(key) or getitem(self, key))
    stats = {}
    for name in ('stored', 'compressed'):
        read_whole.clear()
        fid = FID(extractor=TINY, reference=str(tmp_path / f'{name}.npz'), batch_size=7)
        stats[name] = fid.reference_stats()
        assert ('arr_0' in read_whole) == (name == 'compressed'), (name, read_whole)
    expected = feature_stats(tiny_features(ref)['features'])
    for got in stats.values():
        np.testing.assert_allclose(got['mu'], expected[0], rtol=1e-6)
        np.testing.assert_allclose(got['sigma'], expected[1], rtol=1e-6, atol=1e-9)


def test_statistics_beside_arr_0_are_not_checked_for_the_pictures_size(tmp_path):
    """ADM's VIRTUAL_*.npz hold mu / sigma and arr_0: only the statistics are used,
    but the first batch was refused for arr_0's picture size, after sampling began."""
    gen = pictures(20, 3)  # 8x8
    feats = tiny_features(gen)['features']
    np.savez(tmp_path / 'virtual.npz', arr_0=pictures(4, 0, size=16),
             mu=feats.mean(0) + 1, sigma=np.cov(feats, rowvar=False))
    fid = FID(extractor=TINY, reference=str(tmp_path / 'virtual.npz'))
    fid.check_inputs(num_samples=20, sample_size=(8, 8))
    assert feed(fid, gen)['FID'] == pytest.approx(feats.shape[1], rel=1e-6)  # |1|^2 * dim


def test_metrics_reporting_the_same_name_are_refused_when_built():
    """FID(inception_score=True) beside an InceptionScore failed only after all the
    sampling, in mmengine ('multiple evaluation results with the same metric name')."""
    from mmsora.apis import build_evaluator
    fid = dict(type='FID', extractor=TINY, reference='ref.npz', inception_score=True)
    inception = dict(type='InceptionScore', extractor=TINY)
    with pytest.raises(ValueError) as info:
        build_evaluator([fid, inception])
    assert str(info.value) == (
        'evaluation.metrics: FID (inception_score=True) and InceptionScore both report IS: '
        "drop one of them, or give one a prefix (prefix='...' in its config names its "
        'results PREFIX/IS)')
    with pytest.raises(ValueError, match='FID and FID both report FID'):
        build_evaluator([dict(fid, inception_score=False),
                         dict(fid, inception_score=False, reference='other.npz')])
    evaluator = build_evaluator([fid, dict(inception, prefix='own')])
    assert [m.result_names() for m in evaluator.metrics] == [['FID', 'IS', 'IS_std'],
                                                               ['own/IS', 'own/IS_std']]
    build_evaluator([dict(fid, inception_score=False), inception])
    assert InceptionScore(extractor=TINY).result_names() == ['IS', 'IS_std']


def test_non_finite_samples_are_named(capsys):
    """NaN became black and inf white without a word: a diverged model scored a
    plausible FID."""
    from mmsora.apis import to_uint8_samples
    x = torch.zeros(4, 3, 2, 2)
    x[1, 0, 0, 0] = float('nan')
    x[3, 2, 1, 1] = float('inf')
    got = to_uint8_samples(x, range(40, 44))
    assert got[1, 0, 0, 0] == 0 and got[3, 1, 1, 2] == 255  # still quantised as before
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['warning: 2 of 4 samples (41, 43) hold NaN or inf values (the model '
                   'diverged?): they are scored as black / white pictures']
    to_uint8_samples(torch.zeros(2, 3, 2, 2))
    assert capsys.readouterr().err == ''
    to_uint8_samples(torch.full((2, 3, 2, 2), float('nan')))  # all of them: warned too
    assert 'warning: 2 of 2 samples (0, 1) hold NaN' in capsys.readouterr().err


def test_mass_sampling_names_non_finite_samples_by_global_index(capsys):
    from mmsora.apis import mass_sample
    from tests.test_evaluation.test_mass_sampling import fake_sample

    def diverging(seeds, **kwargs):
        x = fake_sample(seeds, **kwargs)
        x[[k for k, s in enumerate(seeds) if s in (2, 7)]] = float('nan')
        return x

    mass_sample(None, 8, [0], seed=0, batch_size=4, sample_fn=diverging, progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f'warning: 1 of 4 samples ({i}) hold NaN or inf values (the model diverged?): '
        'they are scored as black / white pictures' for i in (2, 7)]


def test_a_grayscale_model_is_told_the_metrics_need_rgb():
    from mmsora.apis import to_uint8_samples
    with pytest.raises(ValueError) as info:
        to_uint8_samples(torch.zeros(2, 1, 8, 8))
    assert str(info.value) == (
        'the metrics and the saved samples need 3-channel RGB pictures (N, 3, H, W) or '
        'clips (N, 3, T, H, W), but the model gives 1-channel ones of shape (2, 1, 8, 8)')
    with pytest.raises(ValueError, match='4-channel ones .* latent models need a VAE'):
        to_uint8_samples(torch.zeros(2, 4, 3, 8, 8))

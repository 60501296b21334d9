"""The metric maths against closed forms."""
import numpy as np
import pytest

from mmsora.evaluation import (clip_score, feature_stats, frechet_distance,
                               inception_score, load_stats, save_stats)


def random_rotation(d, rng):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_fid_of_two_gaussians_is_the_closed_form():
    # Commuting covariances R diag(a) R^T and R diag(b) R^T:
    # FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    d = 16
    r = random_rotation(d, rng)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, r @ np.diag(a) @ r.T, mu2, r @ np.diag(b) @ r.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fid_general_covariances_matches_the_symmetric_form():
    # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), computed here by eigendecompositions.
    rng = np.random.default_rng(1)
    d = 12
    m1, m2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)

    def sqrtm_sym(m):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T

    root = sqrtm_sym(s1)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrtm_sym(root @ s2 @ root))
    mu = rng.standard_normal(d)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-7)


def test_fid_from_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(2)
    mu2 = np.array([1.0, -2.0, 0.5])
    x = rng.standard_normal((200000, 3))                       # N(0, I)
    y = rng.standard_normal((200000, 3)) * 2 + mu2             # N(mu2, 4 I)
    expected = (mu2 ** 2).sum() + 3 * (1 - 2) ** 2             # 5.25 + 3
    got = frechet_distance(*feature_stats(x), *feature_stats(y))
    assert got == pytest.approx(expected, rel=0.01)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((300, 32))
    stats = feature_stats(feats)
    assert abs(frechet_distance(*stats, *stats)) < 1e-8
    # Fewer samples than dimensions: a singular covariance still gives ~0, without
    # scipy's 'singular matrix' warning (the metric says it in its own words)
    small = feature_stats(feats[:10])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert abs(frechet_distance(*small, *small)) < 1e-4


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match='different sizes'):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match='at least 2'):
        feature_stats(np.zeros((1, 3)))


def test_inception_score_on_known_logits():
    k = 10
    # Confident and evenly spread over k classes: IS = k.
    logits = np.full((100, k), -1e4)
    logits[np.arange(100), np.arange(100) % k] = 0
    assert inception_score(logits)[0] == pytest.approx(k, rel=1e-9)
    # Identical predictions for all samples: IS = 1.
    same = np.tile(np.random.default_rng(0).standard_normal(k), (50, 1))
    assert inception_score(same)[0] == pytest.approx(1.0, abs=1e-12)
    # Two samples, p1 = (a, 1-a), p2 = (1-a, a): marginal uniform,
    # IS = exp(log 2 + a log a + (1-a) log(1-a)).
    a = 0.8
    two = np.log(np.array([[a, 1 - a], [1 - a, a]]))
    expected = np.exp(np.log(2) + a * np.log(a) + (1 - a) * np.log(1 - a))
    assert inception_score(two)[0] == pytest.approx(expected, rel=1e-12)


def test_inception_score_splits_like_the_adm_evaluator():
    # First split all class 0 (IS 1), second split evenly spread (IS 4): mean 2.5, std 1.5.
    logits = np.full((8, 4), -1e4)
    logits[:4, 0] = 0
    logits[np.arange(4, 8), np.arange(4)] = 0
    mean, std = inception_score(logits, split_size=4)
    assert (mean, std) == (pytest.approx(2.5), pytest.approx(1.5))


def test_clip_score_is_clamped_scaled_cosine():
    img = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    txt = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(clip_score(img, txt), [100.0, 100 / np.sqrt(2), 0.0])


def test_stats_files_round_trip(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3)
    path = save_stats(str(tmp_path / 'sub' / 'ref.npz'), mu, sigma, extractor='x')
    stats = load_stats(path)
    np.testing.assert_array_equal(stats['mu'], mu)
    np.testing.assert_array_equal(stats['sigma'], sigma)
    np.savez(tmp_path / 'bad.npz', arr_0=np.zeros(2))
    with pytest.raises(KeyError, match='no feature statistics'):
        load_stats(str(tmp_path / 'bad.npz'))

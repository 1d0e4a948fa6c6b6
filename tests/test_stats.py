import numpy as np
import pytest

from cyclegan_vc.stats import (
    STD_FLOOR,
    SpeakerStats,
    compute_stats,
    convert_f0,
    denormalize,
    f0_search_range,
    normalize,
)


def random_utterances(seed=0, n=5, dim=24):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = int(rng.integers(50, 300))
        f0 = rng.uniform(80, 300, t)
        f0[rng.random(t) < 0.4] = 0.0  # unvoiced frames
        out.append((f0, rng.normal(rng.normal(size=dim), rng.uniform(0.1, 2, dim), (t, dim))))
    return out


def test_statistics_equal_direct_numpy():
    utts = random_utterances()
    stats = compute_stats(utts)
    mcep = np.concatenate([m for _, m in utts])
    f0 = np.concatenate([f for f, _ in utts])
    np.testing.assert_allclose(stats.mcep_mean, mcep.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.mcep_std, mcep.std(axis=0), rtol=1e-8)
    lf0 = np.log(f0[f0 > 0])
    assert stats.logf0_mean == pytest.approx(lf0.mean(), rel=1e-12)
    assert stats.logf0_std == pytest.approx(lf0.std(), rel=1e-8)
    assert stats.n_frames == len(f0) and stats.n_voiced == lf0.size


def test_log_f0_never_takes_log_of_zero():
    f0 = np.array([0.0, 0.0, 100.0, 200.0, 0.0])
    with np.errstate(divide="raise", invalid="raise"):
        stats = compute_stats([(f0, np.zeros((5, 3)))])
        converted = convert_f0(f0, stats, stats)
    assert np.isfinite(stats.logf0_mean) and np.isfinite(stats.logf0_std)
    assert np.all(converted[f0 == 0] == 0)
    np.testing.assert_allclose(converted[f0 > 0], f0[f0 > 0])


def test_zero_variance_is_floored():
    stats = compute_stats([(np.full(10, 100.0), np.ones((10, 4)))])
    assert np.all(stats.mcep_std >= STD_FLOOR) and stats.logf0_std >= STD_FLOOR
    assert np.all(np.isfinite(normalize(np.ones((3, 4)), stats)))


def test_no_voiced_frames_is_a_clear_error():
    with pytest.raises(ValueError, match="no voiced frames"):
        compute_stats([(np.zeros(10), np.zeros((10, 2)))])


def test_normalize_denormalize_round_trip_and_dict():
    stats = compute_stats(random_utterances(1))
    x = np.random.default_rng(2).normal(size=(40, 24))
    np.testing.assert_allclose(denormalize(normalize(x, stats), stats), x, atol=1e-12)
    again = SpeakerStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(again.mcep_mean, stats.mcep_mean)
    assert again.logf0_std == stats.logf0_std


def test_f0_transform_maps_source_distribution_onto_target():
    rng = np.random.default_rng(3)
    src_f0 = np.exp(rng.normal(np.log(120), 0.15, 5000))
    tgt_f0 = np.exp(rng.normal(np.log(230), 0.25, 5000))
    d = np.zeros((5000, 2))
    src, tgt = compute_stats([(src_f0, d)]), compute_stats([(tgt_f0, d)])
    out = np.log(convert_f0(src_f0, src, tgt))
    assert out.mean() == pytest.approx(tgt.logf0_mean, abs=1e-9)
    assert out.std() == pytest.approx(tgt.logf0_std, rel=1e-6)


def test_f0_search_range_is_three_log_f0_deviations_each_side_within_the_limits():
    stats = SpeakerStats(np.zeros(2), np.ones(2), logf0_mean=float(np.log(200.0)), logf0_std=0.2, n_voiced=100)
    lo, hi = f0_search_range(stats, 71.0, 800.0)
    assert lo == pytest.approx(200 * np.exp(-0.6)) and hi == pytest.approx(200 * np.exp(0.6))
    assert f0_search_range(stats, 71.0, 800.0, width=4.0) == pytest.approx((200 * np.exp(-0.8), 200 * np.exp(0.8)))
    assert f0_search_range(stats, 150.0, 300.0) == (150.0, 300.0)  # clipped to the limits
    low = SpeakerStats(np.zeros(2), np.ones(2), logf0_mean=float(np.log(90.0)), logf0_std=0.2, n_voiced=100)
    assert f0_search_range(low, 71.0, 800.0) == pytest.approx((71.0, 90 * np.exp(0.6)))
    # no spread, no voiced frames, or a range that would be too narrow: the full range
    flat = SpeakerStats(np.zeros(2), np.ones(2), logf0_mean=float(np.log(200.0)), logf0_std=STD_FLOOR, n_voiced=100)
    assert f0_search_range(flat, 71.0, 800.0) == (71.0, 800.0)
    assert f0_search_range(SpeakerStats(np.zeros(2), np.ones(2), 0.0, 1.0, n_voiced=0), 71.0, 800.0) == (71.0, 800.0)
    assert f0_search_range(low, 71.0, 800.0, width=0.1) == (71.0, 800.0)
    with pytest.raises(ValueError):
        f0_search_range(stats, 800.0, 71.0)
    with pytest.raises(ValueError):
        f0_search_range(stats, 71.0, 800.0, width=0.0)

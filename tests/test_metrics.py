"""Objective metrics: MCD and DTW invariants, F0 and V/UV errors, speaker similarity, DNSMOS, baseline."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest

from cyclegan_vc.audio import load_audio, resample
from cyclegan_vc.features import FeatureConfig, analyze, synthesize
from cyclegan_vc.metrics import (
    MCD_CONVENTION,
    DnsmosScorer,
    Evaluator,
    SpeakerEncoder,
    align_mel_cepstra,
    conventions,
    cosine,
    dtw,
    f0_rmse_cents,
    frame_mcd,
    mcd,
    mean_variance_convert,
    mel_cepstrum,
    vuv_error,
)
from cyclegan_vc.stats import compute_stats

RATE = 16000


def brute_force_dtw_cost(x, y, diag_weight):
    """Textbook O(NM) double loop: accumulated cost at (N, M)."""
    n, m = len(x), len(y)
    d = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c = d[i - 1, j - 1]
            acc[i, j] = min(acc[i - 1, j - 1] + diag_weight * c, acc[i - 1, j] + c, acc[i, j - 1] + c)
    return acc[n, m]


# ------------------------------------------------------------------ MCD and DTW on synthetic data


def test_mcd_of_identical_mel_cepstra_is_zero():
    mc = np.random.default_rng(0).normal(size=(120, 25))
    assert mcd(mc, mc) == 0.0
    assert mcd(mc, mc, align=False) == 0.0
    assert np.all(frame_mcd(mc, mc) == 0.0)


def test_mcd_is_symmetric():
    """With the symmetric step pattern dtw(b, a) is the transposed path of dtw(a, b), so the path
    average is the same up to float rounding (tolerance 1e-9 dB)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(80, 25)), rng.normal(size=(97, 25))
    assert mcd(a, b) == pytest.approx(mcd(b, a), abs=1e-9)
    pab, pba = dtw(a[:, 1:], b[:, 1:]).path, dtw(b[:, 1:], a[:, 1:]).path
    np.testing.assert_array_equal(pab, pba[:, ::-1])


def test_mcd_known_value_and_c0_excluded():
    """Constant mel-cepstra differing by 0.1 in each of c1..c24 (and by 5 in c0, which is ignored):
    10 / ln 10 * sqrt(2 * 24 * 0.1^2) = 4.3429448 * sqrt(0.48) = 4.3429448 * 0.6928203 = 3.0088804 dB,
    on every frame pair whatever the path, so also between sequences of different lengths."""
    ref = np.zeros((50, 25))
    test = np.full((70, 25), 0.1)
    test[:, 0] = 5.0
    assert mcd(ref, test) == pytest.approx(3.0088804, abs=1e-6)
    assert mcd(ref, test[:50], align=False) == pytest.approx(3.0088804, abs=1e-6)


def test_dtw_recovers_a_known_time_warp_with_zero_cost():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 24))
    counts = rng.integers(1, 4, size=60)  # every reference frame repeated 1-3 times in the test
    warp = np.repeat(np.arange(60), counts)
    y = x[warp]
    alignment = dtw(x, y)
    assert alignment.cost == 0.0
    np.testing.assert_array_equal(alignment.path, np.column_stack([warp, np.arange(len(warp))]))
    mc_x = np.column_stack([rng.normal(size=60), x])  # c0 differs freely
    mc_y = np.column_stack([rng.normal(size=len(warp)), y])
    assert mcd(mc_x, mc_y) == 0.0
    assert mcd(mc_y, mc_x) == 0.0  # frames dropped rather than repeated


@pytest.mark.parametrize("pattern,weight", [("symmetric2", 2.0), ("symmetric1", 1.0)])
def test_dtw_matches_a_brute_force_reference(pattern, weight):
    rng = np.random.default_rng(3)
    for _ in range(6):
        x = rng.normal(size=(rng.integers(1, 25), 3))
        y = rng.normal(size=(rng.integers(1, 25), 3))
        alignment = dtw(x, y, step_pattern=pattern)
        path = alignment.path
        assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (len(x) - 1, len(y) - 1)
        steps = np.diff(path, axis=0)
        assert np.all(np.isin(steps.sum(axis=1), (1, 2))) and np.all(steps >= 0)
        # The path's own weighted cost equals the optimum of the brute-force recursion.
        d = np.linalg.norm(x[path[:, 0]] - y[path[:, 1]], axis=1)
        w = np.where(np.r_[True, steps.sum(axis=1) == 2], weight, 1.0)
        assert float((w * d).sum()) == pytest.approx(brute_force_dtw_cost(x, y, weight), rel=1e-12)


def test_dtw_of_1000_by_1000_frames_is_a_monotone_path_from_corner_to_corner():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(1000, 24)), rng.normal(size=(1000, 24))
    alignment = dtw(x, y)
    assert alignment.path.shape[1] == 2 and 1000 <= len(alignment.path) <= 1999
    assert tuple(alignment.path[0]) == (0, 0) and tuple(alignment.path[-1]) == (999, 999)
    assert np.all(np.isin(np.diff(alignment.path, axis=0), (0, 1)))


def test_dtw_band_constrains_the_path_and_never_beats_the_free_optimum():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(150, 8))
    free = dtw(x, y)
    banded = dtw(x, y, band=5)
    i, j = banded.path[:, 0], banded.path[:, 1] * (199 / 149)
    assert np.all(np.abs(i - j) <= 5)
    assert banded.cost >= free.cost - 1e-12
    with pytest.raises(ValueError, match="band"):
        dtw(x, y, band=0)


def test_metric_input_errors_are_explicit():
    a = np.zeros((10, 25))
    with pytest.raises(ValueError, match="equal frame counts"):
        mcd(a, np.zeros((11, 25)), align=False)
    with pytest.raises(ValueError, match="different orders"):
        mcd(a, np.zeros((10, 13)))
    with pytest.raises(ValueError, match="non-empty"):
        f0_rmse_cents(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match=">= 0 Hz"):
        vuv_error(np.full(5, -1.0), np.zeros(5))
    with pytest.raises(ValueError, match="step_pattern"):
        dtw(a, a, step_pattern="asymmetric")


# ------------------------------------------------------------------ F0 and voicing


def test_f0_rmse_of_a_contour_shifted_by_100_cents_is_100():
    f0 = np.linspace(100.0, 300.0, 200)
    f0[::7] = 0.0  # unvoiced frames are skipped
    shifted = f0 * 2 ** (100 / 1200)
    assert f0_rmse_cents(f0, shifted) == pytest.approx(100.0, abs=1e-9)
    assert f0_rmse_cents(shifted, f0) == pytest.approx(100.0, abs=1e-9)
    identity = np.column_stack([np.arange(200), np.arange(200)])
    assert f0_rmse_cents(f0, shifted, identity) == pytest.approx(100.0, abs=1e-9)
    assert math.isnan(f0_rmse_cents(np.zeros(10), np.full(10, 120.0)))


def test_f0_rmse_follows_the_path():
    ref = np.array([100.0, 200.0, 0.0])
    test = np.array([200.0, 100.0 * 2 ** (50 / 1200), 0.0])
    path = np.array([[0, 1], [1, 0], [2, 2]])  # pairs (100, 103) +50 cents and (200, 200) 0 cents
    assert f0_rmse_cents(ref, test, path) == pytest.approx(math.sqrt((50**2 + 0) / 2), abs=1e-9)


def test_vuv_error_on_known_masks():
    ref = np.array([120.0, 130.0, 0.0, 0.0, 150.0])
    test = np.array([121.0, 0.0, 0.0, 90.0, 151.0])
    assert vuv_error(ref, test) == pytest.approx(2 / 5)
    assert vuv_error(ref, ref) == 0.0
    path = np.array([[0, 0], [1, 0], [2, 1], [3, 2], [4, 4]])  # pairs: VV, VV, UU, UU, VV
    assert vuv_error(ref, test, path) == 0.0


# ------------------------------------------------------------------ baseline


def test_mean_variance_convert_maps_source_statistics_to_target():
    rng = np.random.default_rng(6)
    src_mcep = rng.normal(2.0, 3.0, size=(4000, 24))
    tgt_mcep = rng.normal(-1.0, 0.5, size=(4000, 24))
    src_f0 = np.where(rng.random(4000) < 0.6, rng.lognormal(np.log(120), 0.1, 4000), 0.0)
    tgt_f0 = np.where(rng.random(4000) < 0.6, rng.lognormal(np.log(220), 0.2, 4000), 0.0)
    source = compute_stats([(src_f0, src_mcep)])
    target = compute_stats([(tgt_f0, tgt_mcep)])
    mc, f0 = mean_variance_convert(src_mcep, src_f0, source, target)
    np.testing.assert_allclose(mc.mean(0), target.mcep_mean, atol=1e-9)
    np.testing.assert_allclose(mc.std(0), target.mcep_std, rtol=1e-9)
    np.testing.assert_array_equal(f0 > 0, src_f0 > 0)
    assert np.log(f0[f0 > 0]).mean() == pytest.approx(target.logf0_mean, abs=1e-9)
    same, f0_same = mean_variance_convert(src_mcep, src_f0, source, source)
    np.testing.assert_allclose(same, src_mcep, atol=1e-12)
    np.testing.assert_allclose(f0_same, src_f0, rtol=1e-12)
    with pytest.raises(ValueError, match="dimensions"):
        mean_variance_convert(src_mcep[:, :10], src_f0, source, target)


def test_conventions_quote_the_mcd_settings():
    text = conventions(FeatureConfig())
    assert text["MCD"] == MCD_CONVENTION
    for phrase in ("sp2mc", "order 24", "alpha = 0.42", "c0 (energy) excluded", "All frames", "DTW", "c1..c24"):
        assert phrase in MCD_CONVENTION
    assert "harvest" in text["Analysis"]


# ------------------------------------------------------------------ real VCC 2016 speech


@pytest.fixture(scope="module")
def waves(vcc_file):
    files = {
        "SF1_1": vcc_file("SF1", 200001),
        "SF1_2": vcc_file("SF1", 200002),
        "TF2_1": vcc_file("TF2", 200001),
        "TM3_1": vcc_file("TM3", 200001),
    }
    return {k: load_audio(p, RATE)[0] for k, p in files.items()}


def textbook_dtw_path(x, y):
    """The symmetric1 recursion in plain loops with its backtracking (ties: diagonal, then up, then left)."""
    n, m = len(x), len(y)
    d = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)).tolist()
    acc = [[math.inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0.0
    for i in range(1, n + 1):
        row, prev, di = acc[i], acc[i - 1], d[i - 1]
        for j in range(1, m + 1):
            row[j] = di[j - 1] + min(prev[j - 1], prev[j], row[j - 1])
    path, i, j = [], n, m
    while (i, j) != (1, 1):
        path.append((i - 1, j - 1))
        best = min(acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1])
        if acc[i - 1][j - 1] == best:
            i, j = i - 1, j - 1
        elif acc[i - 1][j] == best:
            i -= 1
        else:
            j -= 1
    path.append((0, 0))
    return np.asarray(path[::-1])


@pytest.mark.parametrize("target", ["TF2_1", "TM3_1"])
def test_dtw_gives_the_textbook_path_and_mcd_on_real_speech(waves, target):
    """The DTW (librosa's recursion) on a real cross-speaker pair of the same sentence: the MCD along its
    path equals the one along the textbook recursion's path within 0.01 dB (the paths themselves are
    equal but for ties)."""
    cfg = FeatureConfig(f0_method="dio")
    ref, test = mel_cepstrum(waves["SF1_1"], RATE, cfg).mc, mel_cepstrum(waves[target], RATE, cfg).mc
    ours = align_mel_cepstra(ref, test).path
    textbook = textbook_dtw_path(ref[:, 1:], test[:, 1:])
    assert mcd(ref, test, path=ours) == pytest.approx(mcd(ref, test, path=textbook), abs=0.01)
    assert mcd(ref, test, path=ours) > 5.0  # different speakers: a real distance, not a degenerate path


@pytest.fixture(scope="module")
def offline_models():
    """Speaker encoder and DNSMOS loaded and run once with every outgoing connection refused:
    the weights ship inside the wheels, nothing is downloaded."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during model loading")

    encoder, scorer = SpeakerEncoder(), DnsmosScorer()
    noise = np.random.default_rng(7).uniform(-0.1, 0.1, RATE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        encoder.embed(noise, RATE)
        scorer(noise, RATE)
    return encoder, scorer


def test_mel_cepstrum_of_real_speech(waves):
    cfg = FeatureConfig()
    feats = mel_cepstrum(waves["SF1_1"], RATE, cfg)
    hop = RATE * cfg.frame_period / 1000
    assert feats.mc.shape == (len(waves["SF1_1"]) // hop + 1, 25)
    assert feats.f0.shape == (feats.mc.shape[0],)
    assert 0.3 < np.mean(feats.f0 > 0) < 0.95
    # Input at another rate is resampled to the analysis rate first. (Not compared with the original:
    # the 16 -> 22.05 -> 16 kHz round trip removes the 7.6-8 kHz band and alone costs about 3.8 dB MCD.)
    wave_22k = resample(waves["SF1_1"], RATE, 22050)
    other = mel_cepstrum(wave_22k, 22050, cfg)
    direct = mel_cepstrum(resample(wave_22k, 22050, RATE), RATE, cfg)
    np.testing.assert_array_equal(other.mc, direct.mc)
    assert other.mc.shape == feats.mc.shape
    assert f0_rmse_cents(feats.f0, other.f0) < 5.0
    with pytest.raises(ValueError, match="mono"):
        mel_cepstrum(np.zeros((100, 2)), RATE, cfg)


def test_mcd_on_real_speech_no_conversion_and_world_floor(waves):
    """Measured (harvest): SF1 vs TF2 sentence 200001 about 7.3 dB; TF2 WORLD resynthesis about 3.1 dB."""
    cfg = FeatureConfig()
    sf1 = mel_cepstrum(waves["SF1_1"], RATE, cfg)
    tf2 = mel_cepstrum(waves["TF2_1"], RATE, cfg)
    resynth = mel_cepstrum(synthesize(analyze(waves["TF2_1"], cfg), cfg), RATE, cfg)
    no_conversion = mcd(tf2.mc, sf1.mc)
    floor = mcd(tf2.mc, resynth.mc)
    assert 6.0 < no_conversion < 9.5
    assert 1.5 < floor < 4.0
    assert mcd(sf1.mc, sf1.mc) == 0.0
    path = align_mel_cepstra(tf2.mc, resynth.mc).path
    assert vuv_error(tf2.f0, resynth.f0, path) < 0.2
    # Median F0 deviation of the resynthesis is small (RMSE is dominated by rare octave jumps).
    a, b = tf2.f0[path[:, 0]], resynth.f0[path[:, 1]]
    both = (a > 0) & (b > 0)
    assert np.median(np.abs(1200 * np.log2(b[both] / a[both]))) < 50


def test_speaker_similarity_separates_speakers(waves, offline_models):
    encoder, _ = offline_models
    emb = encoder.embed(waves["SF1_1"], RATE)
    assert emb.shape == (256,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-6)
    assert cosine(emb, encoder.embed(waves["SF1_1"], RATE)) == pytest.approx(1.0, abs=1e-6)
    same = cosine(emb, encoder.embed(waves["SF1_2"], RATE))
    other = cosine(emb, encoder.embed(waves["TM3_1"], RATE))
    assert same > 0.8 and same > other + 0.15, (same, other)
    speaker = encoder.embed_speaker([waves["SF1_2"]], RATE)
    np.testing.assert_allclose(speaker, encoder.embed(waves["SF1_2"], RATE), atol=1e-12)


def test_dnsmos_of_real_speech_and_of_noise(waves, offline_models):
    _, scorer = offline_models
    speech = scorer(waves["SF1_1"], RATE)
    assert set(speech) >= {"ovrl", "sig", "bak", "p808"}
    assert 2.5 < speech["ovrl"] < 4.0, speech
    noise = scorer(np.random.default_rng(8).uniform(-0.3, 0.3, 3 * RATE), RATE)
    assert noise["ovrl"] < speech["ovrl"] - 1.0, (noise, speech)


def test_evaluator_scores_pairs_and_caches_analyses(waves, offline_models):
    encoder, scorer = offline_models
    evaluator = Evaluator(FeatureConfig(f0_method="dio"), encoder=encoder, dnsmos_scorer=scorer)
    src, tgt = waves["SF1_1"], waves["TF2_1"]
    pairs = [("200001", src, src, tgt)]
    rows = evaluator.evaluate_pairs(pairs, target_refs=[tgt], source_refs=[waves["SF1_2"]], progress=False)
    (row,) = rows
    assert row.id == "200001" and 6.0 < row.mcd_db < 9.5
    assert row.sim_to_source > row.sim_to_target
    assert 2.5 < row.dnsmos_ovrl < 4.0 and row.ref_frames > 0 and row.test_frames > 0
    n_cached = len(evaluator._features)
    again = evaluator.evaluate_pairs(pairs, target_refs=[tgt], progress=False)
    assert len(evaluator._features) == n_cached  # nothing analysed twice
    assert again[0].mcd_db == row.mcd_db and math.isnan(again[0].sim_to_source)
    with pytest.raises(ValueError, match="target_refs"):
        evaluator.evaluate_pairs(pairs, progress=False)
    with pytest.raises(ValueError, match="200001"):
        evaluator.evaluate_pairs([("200001", src, np.zeros((3, 3)), tgt)], target_refs=[tgt], progress=False)


import numpy as np
import pysptk
import pytest

from cyclegan_vc.audio import load_audio
from cyclegan_vc.features import (
    FeatureConfig,
    WorldFeatures,
    analyze,
    analyze_envelope,
    decode_aperiodicity,
    decode_envelope,
    encode_aperiodicity,
    encode_envelope,
    estimate_f0,
    synthesize,
)


def sptk_mcd(sp_ref, sp_test):
    """Frame-by-frame MCD (dB) of two equally long envelope sequences: order 24, alpha 0.42, no c0."""
    t = min(len(sp_ref), len(sp_test))
    a = pysptk.sp2mc(sp_ref[:t], 24, 0.42)[:, 1:]
    b = pysptk.sp2mc(sp_test[:t], 24, 0.42)[:, 1:]
    return float(np.mean(10 / np.log(10) * np.sqrt(2 * np.sum((a - b) ** 2, axis=1))))


@pytest.mark.parametrize("method", ["harvest", "dio"])
def test_analysis_synthesis_round_trip_on_real_speech(vcc_file, method):
    """Analysis -> synthesis -> analysis of a real VCC 2016 utterance stays below 4 dB MCD
    (SPTK mel-cepstrum order 24, alpha 0.42, c0 excluded, frames aligned one to one).
    Measured: about 2.8 dB with harvest and 2.9 dB with dio on SF1/100003."""
    cfg = FeatureConfig(f0_method=method)
    wave, rate = load_audio(vcc_file("SF1", 100003), cfg.sample_rate)
    feats = analyze(wave, cfg)
    hop = int(rate * cfg.frame_period / 1000)
    assert feats.n_frames == len(wave) // hop + 1
    assert feats.mcep.shape == (feats.n_frames, 24)
    assert feats.ap.shape == (feats.n_frames, cfg.fft_size // 2 + 1)
    assert 0.3 < feats.voiced.mean() < 0.95
    voiced_f0 = feats.f0[feats.voiced]
    assert 120 < np.median(voiced_f0) < 350  # a female speaker

    resynth = synthesize(feats, cfg)
    assert abs(len(resynth) - len(wave)) <= hop
    again = analyze(resynth[: len(wave)], cfg)
    assert sptk_mcd(decode_envelope(feats.mcep, cfg), decode_envelope(again.mcep, cfg)) < 4.0


def test_f0_of_a_synthetic_harmonic_tone():
    rate, f0 = 16000, 150.0
    t = np.arange(rate) / rate
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)) * 0.2
    for method in ("harvest", "dio"):
        feats = analyze(wave, FeatureConfig(f0_method=method))
        mid = feats.f0[40:-40]
        assert np.all(mid > 0)
        assert np.median(np.abs(1200 * np.log2(mid / f0))) < 10  # cents


def test_a_given_f0_range_bounds_the_search_and_keeps_the_envelope_settings():
    rate = 16000
    t = np.arange(rate) / rate
    tone = lambda f0: sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)) * 0.2  # noqa: E731
    for method in ("harvest", "dio"):
        config = FeatureConfig(f0_method=method)
        inside = estimate_f0(tone(220.0), config, f0_range=(150.0, 330.0))[0][40:-40]
        assert np.all(inside > 0) and np.median(np.abs(1200 * np.log2(inside / 220.0))) < 10
        outside = estimate_f0(tone(500.0), config, f0_range=(150.0, 330.0))[0][40:-40]
        assert not np.any(np.abs(1200 * np.log2(outside[outside > 0] / 500.0)) < 50)  # not found outside it
        full = analyze(tone(220.0), config)
        narrow = analyze(tone(220.0), config, f0_range=(150.0, 330.0))
        assert narrow.mcep.shape == full.mcep.shape and narrow.ap.shape == full.ap.shape  # CheapTrick's floor kept
    with pytest.raises(ValueError, match="floor"):
        estimate_f0(tone(220.0), FeatureConfig(), f0_range=(300.0, 100.0))


def test_envelope_and_aperiodicity_coding_round_trip(vcc_file):
    cfg = FeatureConfig(f0_method="dio")
    wave, _ = load_audio(vcc_file("TM3", 100001), cfg.sample_rate)
    feats = analyze(wave, cfg)
    sp = decode_envelope(feats.mcep, cfg)
    # the mel-warping interpolation makes coding nearly, not exactly, invertible (max error ~0.007)
    np.testing.assert_allclose(encode_envelope(sp, cfg), feats.mcep, atol=0.02)
    ap = decode_aperiodicity(encode_aperiodicity(feats.ap, cfg), cfg)
    assert ap.shape == feats.ap.shape and np.all((ap >= 0) & (ap <= 1))


def test_config_validation_and_dict_round_trip():
    cfg = FeatureConfig(mcep_dim=36, f0_method="dio")
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.fft_size == 1024
    with pytest.raises(ValueError, match="f0_method"):
        FeatureConfig(f0_method="yin")
    with pytest.raises(ValueError):
        FeatureConfig(f0_floor=500, f0_ceil=100)


def test_synthesis_rejects_mismatched_frames():
    cfg = FeatureConfig()
    feats = WorldFeatures(f0=np.zeros(10), mcep=np.zeros((11, 24)), ap=np.ones((10, 513)))
    with pytest.raises(ValueError, match="frame counts differ"):
        synthesize(feats, cfg)


def test_analysis_reuses_a_given_envelope_with_identical_results(vcc_file):
    wave, _ = load_audio(vcc_file("SF1", 100003), sample_rate=16000)
    config = FeatureConfig(f0_method="dio")
    envelope = analyze_envelope(wave, config)
    shared, fresh = analyze(wave, config, envelope=envelope), analyze(wave, config)
    for name in ("f0", "mcep", "ap"):
        np.testing.assert_array_equal(getattr(shared, name), getattr(fresh, name))

"""Conversion of new recordings: the Python API, its options, files, batches, worker processes and the CLI.

A tiny model is built once per module: two debug-size generators (random weights, seeded) with
speaker statistics of real VCC 2016 speech (SF1 as A, TM3 as B; three utterances each, dio),
exported with :func:`export_model`. The model's F0 estimator is dio so that the tests stay fast;
one test converts with harvest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from cyclegan_vc import cli
from cyclegan_vc.audio import AudioError, limit_peaks, load_audio, save_audio
from cyclegan_vc.checkpoint import export_model
from cyclegan_vc.config import load_config
from cyclegan_vc.conversion import (
    ConversionReport,
    VoiceConverter,
    convert,
    load_converter,
    load_in_worker,
    plan_chunks,
    smooth_frames,
)
from cyclegan_vc.features import FeatureConfig, analyze
from cyclegan_vc.models import build_generator
from cyclegan_vc.options import ENERGY_MODES, F0_RANGES, ConversionOptions
from cyclegan_vc.stats import compute_stats, denormalize, f0_search_range, normalize
from cyclegan_vc.utils import UserError

RATE = 16000


pytestmark = pytest.mark.usefixtures("one_thread")


def _stats(vcc_file, config: FeatureConfig) -> dict:
    stats = {}
    for role, speaker in (("A", "SF1"), ("B", "TM3")):
        feats = [analyze(load_audio(vcc_file(speaker, n), config.sample_rate)[0], config) for n in (100001, 100002, 100003)]
        stats[role] = compute_stats((f.f0, f.mcep) for f in feats)
    return stats


def _generators() -> dict:
    preset = load_config("debug").model
    torch.manual_seed(0)
    return {role: build_generator(preset.generator, **preset.generator_kwargs) for role in ("G_ab", "G_ba")}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, vcc_file) -> Path:
    features = FeatureConfig(f0_method="dio")
    generators = _generators()
    config = load_config("debug")
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    return export_model(
        path,
        generators,
        generator=config.model.generator,
        generator_kwargs=dict(generators["G_ab"].config),
        stats=_stats(vcc_file, features),
        features=features,
        speakers={"A": "SF1", "B": "TM3"},
        step=0,
        config=config.to_dict(),
    )


@pytest.fixture(scope="module")
def vc(model_path) -> VoiceConverter:
    return VoiceConverter.load(model_path, device="cpu")


@pytest.fixture(scope="module")
def speech(vcc_file) -> np.ndarray:
    """SF1/100002: 1.08 s of real speech at 16 kHz."""
    return load_audio(vcc_file("SF1", 100002))[0]


def _voiced_median_f0(wave: np.ndarray) -> float:
    f0 = analyze(wave, FeatureConfig(f0_method="dio")).f0
    return float(np.median(f0[f0 > 0]))


# -- waveforms ------------------------------------------------------------------------------------
def test_load_from_run_directory_and_file(model_path, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(model_path, run / "model_best.safetensors")
    for source in (model_path, run):
        converter = VoiceConverter.load(source, device="cpu")
        assert converter.sample_rate == RATE
        assert converter.speakers == {"A": "SF1", "B": "TM3"}
        assert all(not g.training for g in converter.generators.values())


def test_conversion_keeps_duration_and_moves_f0_to_the_target(vc, vcc_file):
    wave, rate = load_audio(vcc_file("SF1", 100001))  # 3.5 s, female
    out, out_rate = vc.convert(wave, rate, direction="A2B")
    assert out_rate == RATE
    assert out.shape == wave.shape and out.dtype == np.float64
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 1e-3
    # log-Gaussian F0 transform towards TM3 (male): F0 falls by more than half an octave
    assert _voiced_median_f0(out) < 0.7 * _voiced_median_f0(wave)


@pytest.mark.parametrize("n_samples", [16001, 16000 + 80 * 2 + 37, 1603])
def test_odd_lengths(vc, speech, n_samples):
    """Lengths whose frame counts are not a multiple of 4 (16001 samples: 201 frames)."""
    wave = np.resize(speech, n_samples)
    out, _ = vc.convert(wave, RATE)
    assert len(out) == n_samples


def test_convert_mcep_pads_to_a_multiple_of_4_and_trims_back(vc, speech):
    mcep = analyze(np.resize(speech, 8000 + 80 * 100 - 1), vc.features).mcep[:101]
    seen = []
    hook = vc.generators["G_ab"].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
    try:
        out = vc.convert_mcep(mcep, "A2B")
    finally:
        hook.remove()
    assert mcep.shape == (101, 24) and out.shape == (101, 24)
    assert seen == [104]
    # the padding repeats the last frame: same as converting the explicitly padded input
    padded = np.concatenate([mcep, np.repeat(mcep[-1:], 3, axis=0)])
    np.testing.assert_allclose(out, vc.convert_mcep(padded, "A2B")[:101], atol=1e-5)


def test_the_cli_builds_one_conversion_options_record_with_the_converters_choices():
    parser = cli.build_parser()
    for command in (["convert", "x", "--model", "m", "--out", "o"], ["demo"]):
        args = parser.parse_args(command)
        assert cli._conversion_options(args) == ConversionOptions()  # the defaults are the paper's
        args = parser.parse_args(command + ["--energy", "source", "--smooth", "2", "--f0-range", "speaker"])
        assert cli._conversion_options(args, f0_method="dio") == ConversionOptions("source", 2, "speaker", "dio")
    for energy, f0_range in zip(ENERGY_MODES, F0_RANGES):  # every value the options take is offered
        args = parser.parse_args(["demo", "--energy", energy, "--f0-range", f0_range])
        assert cli._conversion_options(args) == ConversionOptions(energy=energy, f0_range=f0_range)
    args.energy = "loudest"  # a value argparse did not vet is a user's mistake, in one line
    with pytest.raises(UserError, match="energy must be one of"):
        cli._conversion_options(args)


def test_options_are_one_validated_record(model_path, vc):
    assert vc.options == ConversionOptions() and (vc.energy, vc.smooth, vc.f0_range) == ("generator", 0, "full")
    with pytest.raises(TypeError, match="ConversionOptions"):
        VoiceConverter(vc.generators, vc.stats, vc.features, options="source")
    with pytest.raises(AttributeError):
        vc.smooth = 2  # read-only views: the truth is vc.options
    converter = load_converter(model_path, "cpu", ConversionOptions(energy="source", smooth=1))
    assert converter.options == ConversionOptions(energy="source", smooth=1) and converter.step == 0


def test_speaker_f0_range_searches_the_source_speakers_range_in_each_direction(model_path, vc, speech, monkeypatch):
    from cyclegan_vc.conversion import converter as module

    speaker = VoiceConverter.load(model_path, device="cpu", options=ConversionOptions(f0_range="speaker"))
    floor, ceil = vc.features.f0_floor, vc.features.f0_ceil
    assert vc.f0_search_range("A2B") == (floor, ceil)
    for direction, role in (("A2B", "A"), ("B2A", "B")):
        assert speaker.f0_search_range(direction) == f0_search_range(speaker.stats[role], floor, ceil)
    a2b, b2a = speaker.f0_search_range("A2B"), speaker.f0_search_range("B2A")
    assert floor <= b2a[0] < a2b[0] and b2a[1] < a2b[1] <= ceil  # TM3 (male) below SF1 (female)
    seen = []
    real = module.analyze
    monkeypatch.setattr(module, "analyze", lambda *a, **k: seen.append(k.get("f0_range")) or real(*a, **k))
    out, rate = speaker.convert(speech, RATE, "A2B")
    full, _ = vc.convert(speech, RATE, "A2B")
    assert seen == [a2b, None] and rate == RATE and len(out) == len(full) == len(speech)
    assert abs(_voiced_median_f0(out) - _voiced_median_f0(full)) < 0.05 * _voiced_median_f0(full)
    with pytest.raises(ValueError, match="f0_range"):
        ConversionOptions(f0_range="narrow")
    assert load_converter(speaker, options=ConversionOptions(f0_range="full")).f0_range == "full"


def test_energy_from_the_source_replaces_only_c0_with_the_mean_variance_mapped_input(model_path, vc, speech):
    from cyclegan_vc.metrics import mean_variance_convert

    source_energy = VoiceConverter.load(model_path, device="cpu", options=ConversionOptions(energy="source"))
    feats = analyze(speech, vc.features)
    for direction, (src, tgt) in (("A2B", ("A", "B")), ("B2A", ("B", "A"))):
        paper = vc.convert_mcep(feats.mcep, direction)
        kept = source_energy.convert_mcep(feats.mcep, direction)
        linear, _ = mean_variance_convert(feats.mcep, feats.f0, vc.stats[src], vc.stats[tgt])
        np.testing.assert_allclose(kept[:, 1:], paper[:, 1:], atol=1e-12)
        np.testing.assert_allclose(kept[:, 0], linear[:, 0], rtol=1e-5, atol=1e-5)
        assert np.abs(kept[:, 0] - paper[:, 0]).max() > 0.1  # the generator's c0 is something else
    wave, _ = source_energy.convert(speech, RATE)
    assert len(wave) == len(speech) and np.isfinite(wave).all()
    with pytest.raises(ValueError, match="energy"):
        ConversionOptions(energy="loudest")


def test_smooth_frames_removes_the_period_two_pattern_and_keeps_slow_change():
    t = np.arange(200, dtype=np.float64)
    slow = np.sin(2 * np.pi * t / 40)[:, None] * np.ones((1, 3))  # 5 Hz at 5 ms frames
    checker = np.where(t % 2 == 0, 1.0, -1.0)[:, None] * np.ones((1, 3))  # the pixel shuffle's mark
    period4 = np.cos(np.pi * t / 2)[:, None] * np.ones((1, 3))
    np.testing.assert_array_equal(smooth_frames(slow, 0), slow)
    for passes in (1, 2):
        out = smooth_frames(slow + checker, passes)
        inner = slice(passes, -passes)  # the edges repeat the end frames
        gain = np.cos(np.pi / 40) ** (2 * passes)  # cos(w/2)^(2n) at w = 2 pi / 40
        np.testing.assert_allclose(out[inner], gain * slow[inner], atol=1e-9)
        np.testing.assert_allclose(smooth_frames(period4, passes)[inner], 0.5 ** passes * period4[inner], atol=1e-12)
    constant = np.full((7, 2), 3.25)
    np.testing.assert_allclose(smooth_frames(constant, 3), constant)
    with pytest.raises(ValueError, match="passes"):
        smooth_frames(slow, -1)


def test_smooth_option_filters_the_generator_output_only(model_path, vc, speech):
    feats = analyze(speech, vc.features)
    smoothed = VoiceConverter.load(model_path, device="cpu", options=ConversionOptions(smooth=1))
    both = VoiceConverter.load(model_path, device="cpu", options=ConversionOptions(smooth=1, energy="source"))
    source = VoiceConverter.load(model_path, device="cpu", options=ConversionOptions(energy="source"))
    for direction, (_src, tgt) in (("A2B", ("A", "B")), ("B2A", ("B", "A"))):
        paper = vc.convert_mcep(feats.mcep, direction)
        expected = denormalize(smooth_frames(normalize(paper, vc.stats[tgt]), 1), vc.stats[tgt])
        np.testing.assert_allclose(smoothed.convert_mcep(feats.mcep, direction), expected, atol=1e-6)
        kept = both.convert_mcep(feats.mcep, direction)
        np.testing.assert_allclose(kept[:, 1:], expected[:, 1:], atol=1e-6)
        np.testing.assert_allclose(kept[:, 0], source.convert_mcep(feats.mcep, direction)[:, 0], atol=1e-12)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="smooth"):
            ConversionOptions(smooth=bad)
    assert load_converter(smoothed, options=ConversionOptions(smooth=2)) is smoothed and smoothed.smooth == 2


def test_stereo_input_is_averaged(vc, speech):
    mono, _ = vc.convert(speech, RATE)
    same, _ = vc.convert(np.stack([speech, speech], axis=1), RATE)
    np.testing.assert_allclose(same, mono, atol=1e-12)
    other = np.roll(speech, 400) * 0.5
    mixed, _ = vc.convert(np.stack([speech, other], axis=1), RATE)
    np.testing.assert_allclose(mixed, vc.convert((speech + other) / 2, RATE)[0], atol=1e-12)


def test_48khz_input_comes_out_at_the_model_rate(vc, speech):
    wave48 = soxr.resample(speech, RATE, 48000, quality="VHQ")
    out, rate = vc.convert(wave48, 48000)
    assert rate == RATE
    assert abs(len(out) / RATE - len(wave48) / 48000) < 1 / RATE


def test_keep_rate_writes_at_the_input_rate(vc, speech, tmp_path):
    wave48 = soxr.resample(speech, RATE, 48000, quality="VHQ")[:51001]  # an odd count at 48 kHz
    src = save_audio(tmp_path / "in48.wav", wave48, 48000, subtype="FLOAT")
    vc.convert_file(src, tmp_path / "model_rate.wav")
    vc.convert_file(src, tmp_path / "kept.wav", keep_rate=True)
    at_model, kept = sf.info(str(tmp_path / "model_rate.wav")), sf.info(str(tmp_path / "kept.wav"))
    assert at_model.samplerate == RATE and abs(at_model.duration - 51001 / 48000) < 1 / RATE
    assert kept.samplerate == 48000 and kept.frames == 51001


def test_directions_differ(vc, speech):
    a2b, _ = vc.convert(speech, RATE, direction="A2B")
    b2a, _ = vc.convert(speech, RATE, direction="B2A")
    assert np.abs(a2b - b2a).max() > 0.01
    assert _voiced_median_f0(b2a) > _voiced_median_f0(a2b)  # towards SF1 (female) vs. towards TM3 (male)
    with pytest.raises(ValueError, match="direction"):
        vc.convert(speech, RATE, direction="A2A")


def test_f0_method_override(model_path, vc, speech):
    dio, _ = vc.convert(speech, RATE)
    harvest, _ = vc.convert(speech, RATE, f0_method="harvest")
    assert len(harvest) == len(dio) and not np.allclose(harvest, dio)
    # the options' estimator replaces the model's; a call's replaces both
    by_options = VoiceConverter.load(model_path, device="cpu", options=ConversionOptions(f0_method="harvest"))
    np.testing.assert_array_equal(by_options.convert(speech, RATE)[0], harvest)
    np.testing.assert_array_equal(by_options.convert(speech, RATE, f0_method="dio")[0], dio)
    with pytest.raises(ValueError, match="f0_method"):
        vc.convert(speech, RATE, f0_method="yin")


def test_unusable_waveforms_raise(vc):
    with pytest.raises(AudioError, match="silent"):
        vc.convert(np.zeros(RATE), RATE)
    with pytest.raises(AudioError, match="non-finite"):
        vc.convert(np.full(RATE, np.nan), RATE)
    with pytest.raises(AudioError, match="too short"):
        vc.convert(np.ones(100) * 0.1, RATE)


# -- chunking --------------------------------------------------------------------------------------
def test_chunk_plan_covers_the_input_with_bounded_segments(speech):
    wave = np.tile(speech, 40)  # 43 s
    chunks = plan_chunks(wave, RATE, chunk_seconds=4.0, context_seconds=0.5)
    assert len(chunks) == 11 and chunks[-1].last  # boundaries near 4, 8, ..., 40 s and not any(c.last for c in chunks[:-1])
    assert chunks[0].start == 0 and chunks[-1].end == len(wave)
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    longest = (1.5 * 4.0 + 2 * 0.5 + 2 * 0.01) * RATE + 1
    for c in chunks:
        assert c.lo == max(0, c.start - int(0.51 * RATE)) and c.hi - c.lo <= longest
    assert len(plan_chunks(wave[: 6 * RATE], RATE, chunk_seconds=4.0)) == 1  # up to 1.5 chunks: one piece


def test_chunk_join_is_exact_for_a_time_invariant_segment_function(vc, speech, tmp_path, monkeypatch):
    """With a pointwise "conversion" the overlap-add must give back exactly the pointwise result:
    the cross-fade ramps sum to one and every piece lands where it belongs (also when streaming
    a file in blocks that do not line up with the chunks)."""
    converter = VoiceConverter(vc.generators, vc.stats, vc.features, chunk_seconds=1.3, context_seconds=0.2)
    calls = []

    def pointwise(wave, direction, config):
        calls.append(len(wave))
        return np.tanh(3 * wave)

    monkeypatch.setattr(converter, "convert_segment", pointwise)
    wave = np.tile(speech, 9)[: 9 * RATE + 7]
    out, _ = converter.convert(wave, RATE)
    np.testing.assert_allclose(out, np.tanh(3 * wave), atol=1e-12)
    assert len(calls) == 7 and max(calls) <= (1.5 * 1.3 + 2 * 0.2 + 0.02) * RATE + 1

    src = save_audio(tmp_path / "long.wav", wave, RATE, subtype="FLOAT")
    converter.convert_file(src, tmp_path / "out.wav")
    written, _ = sf.read(str(tmp_path / "out.wav"))
    np.testing.assert_allclose(written, limit_peaks(np.tanh(3 * wave)), atol=1 / 32768)  # the file's peaks pass the limiter


def _peak_memory_of_conversion(converter: VoiceConverter, src: Path, dst: Path) -> int:
    """Peak bytes of Python/numpy allocations (tracemalloc) while converting ``src`` into ``dst``."""
    tracemalloc.start()
    try:
        converter.convert_file(src, dst)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ten_minute_input_is_converted_in_chunks_with_bounded_memory(vcc_file, tmp_path):
    """A 10-minute file of real speech (40 VCC utterances, repeated), converted from disk with dio.

    The model works at 8 kHz here so that the test takes seconds rather than a minute; chunking
    does not depend on the rate. Peak memory (tracemalloc: every numpy array, including pyworld's
    outputs) is the same as for a 40-second file, and far below what the whole input's features or
    even one copy of its waveform would take; the joins lie at quiet points and have no clicks.
    """
    rate = 8000
    features = FeatureConfig(sample_rate=rate, f0_method="dio")
    converter = VoiceConverter(_generators(), _stats(vcc_file, features), features, chunk_seconds=10.0, context_seconds=0.5)
    speech = np.concatenate([load_audio(vcc_file("SF1", n))[0] for n in range(100001, 100041)])
    wave = np.tile(speech, int(np.ceil(600 * RATE / len(speech))))[: 600 * RATE]
    short = save_audio(tmp_path / "short.wav", wave[: 40 * RATE], RATE)
    src = save_audio(tmp_path / "long.wav", wave, RATE)
    del wave, speech

    peak_short = _peak_memory_of_conversion(converter, short, tmp_path / "short_converted.wav")
    peak = _peak_memory_of_conversion(converter, src, tmp_path / "long_converted.wav")
    inp = load_audio(src, rate)[0]
    out, out_rate = sf.read(str(tmp_path / "long_converted.wav"))
    assert out_rate == rate and len(out) == len(inp) == 600 * rate
    whole_input = inp.nbytes  # 38 MB: one float64 copy at 8 kHz
    whole_features = 2 * (600 * 200 + 1) * (features.fft_size // 2 + 1) * 8  # envelope + aperiodicity: 490 MB
    message = f"peak {peak / 1e6:.1f} MB for 10 min, {peak_short / 1e6:.1f} MB for 40 s"
    assert peak < 1.25 * peak_short, message
    assert peak < 0.75 * whole_input < 0.1 * whole_features, message

    chunks = plan_chunks(inp, rate, converter.chunk_seconds, converter.context_seconds)
    assert len(chunks) == 60
    jumps = np.abs(np.diff(out))
    typical = np.percentile(jumps, 99)
    frame = rate // 100
    for chunk in chunks[1:]:
        b = chunk.start
        # the boundary is the quietest 10 ms around (so at least as quiet as 9 in 10 frames there)
        around = inp[b - rate : b + rate][: 2 * rate // frame * frame].reshape(-1, frame)
        assert np.square(inp[b - frame // 2 : b + frame // 2]).sum() <= np.percentile(np.square(around).sum(axis=1), 10) + 1e-12
        # no click: no sample-to-sample jump near the join beyond the output's 99th percentile
        assert jumps[b - frame : b + frame].max() <= typical, f"click at {b / rate:.2f} s"


# -- files and batches -------------------------------------------------------------------------------
def test_python_api_and_cli_give_the_same_output(vc, model_path, vcc_file, tmp_path):
    src = tmp_path / "in" / "100002.flac"
    src.parent.mkdir()
    shutil.copy(vcc_file("SF1", 100002), src)
    vc.convert_file(src, tmp_path / "api.wav", direction="B2A")
    code = cli.main(["convert", "--model", str(model_path), "--direction", "B2A", str(src), "--out", str(tmp_path / "cli"), "--device", "cpu"])
    assert code == 0
    api, _ = sf.read(str(tmp_path / "api.wav"))
    via_cli, rate = sf.read(str(tmp_path / "cli" / "100002.wav"))
    assert rate == RATE
    np.testing.assert_array_equal(api, via_cli)
    wave, _ = vc.convert(*load_audio(src, sample_rate=None), direction="B2A")
    np.testing.assert_allclose(api, limit_peaks(wave), atol=1 / 32768)
    # the conversion options reach the converter from the command line
    options = ["--energy", "source", "--smooth", "2"]
    code = cli.main(["convert", "--model", str(model_path), str(src), "--out", str(tmp_path / "opt"), "--device", "cpu", *options])
    assert code == 0
    tuned = VoiceConverter.load(model_path, device="cpu", options=ConversionOptions(energy="source", smooth=2))
    tuned.convert_file(src, tmp_path / "tuned.wav")
    np.testing.assert_array_equal(sf.read(str(tmp_path / "opt" / "100002.wav"))[0], sf.read(str(tmp_path / "tuned.wav"))[0])
    with pytest.raises(SystemExit):
        cli.main(["convert", "--model", str(model_path), str(src), "--out", str(tmp_path / "bad"), "--smooth", "-1"])
    assert not (tmp_path / "bad").exists()


def test_batch_skips_bad_inputs_and_reports_them(model_path, vc, vcc_file, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    shutil.copy(vcc_file("SF1", 100002), data / "good.flac")
    shutil.copy(vcc_file("TM3", 100002), data / "sub" / "good2.flac")
    (data / "text.wav").write_text("this is not audio\n" * 20)
    (data / "empty.wav").write_bytes(b"")
    save_audio(data / "silent.wav", np.zeros(RATE), RATE)
    missing = tmp_path / "missing.wav"
    out = tmp_path / "out"

    report = convert(vc, [data, missing], out, progress=False)
    assert isinstance(report, ConversionReport)
    assert sorted(p.relative_to(out).as_posix() for p in report.outputs) == ["good.wav", "sub/good2.wav"]
    reasons = {path.name: reason for path, reason in report.failures}
    assert set(reasons) == {"text.wav", "empty.wav", "silent.wav", "missing.wav"}
    assert "not a readable audio file" in reasons["text.wav"]
    assert "empty file" in reasons["empty.wav"]
    assert "silent" in reasons["silent.wav"]
    assert "no such file" in reasons["missing.wav"]
    assert report.audio_seconds == pytest.approx(sf.info(str(data / "good.flac")).duration + sf.info(str(data / "sub" / "good2.flac")).duration)
    assert 0 < report.real_time_factor < 10 and set(report.stage_seconds) == {"analysis", "network", "synthesis"}
    # nothing written for the failures, no temporary files left
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["good.wav", "sub", "sub/good2.wav"]
    summary = report.summary()
    assert all(str(path) in summary and reason in summary for path, reason in report.failures)

    capsys.readouterr()
    code = cli.main(["convert", "--model", str(model_path), str(data), str(missing), "--out", str(tmp_path / "cli"), "--device", "cpu"])
    assert code == 1
    printed = capsys.readouterr()
    for name in ("text.wav", "empty.wav", "silent.wav", "missing.wav"):
        assert name in printed.out
    assert "2 file(s)" in printed.out


def test_failed_conversion_leaves_no_partial_output(vc, speech, tmp_path, monkeypatch):
    """A failure half-way through a long file leaves the previous output untouched and no temporary file."""
    converter = VoiceConverter(vc.generators, vc.stats, vc.features, chunk_seconds=1.0, context_seconds=0.1)
    src = save_audio(tmp_path / "in.wav", np.tile(speech, 4), RATE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "in.wav").write_bytes(b"previous result")
    real = converter.convert_segment
    calls = []

    def fail_on_third_chunk(wave, direction, config):
        calls.append(len(wave))
        if len(calls) == 3:
            raise RuntimeError("simulated failure")
        return real(wave, direction, config)

    monkeypatch.setattr(converter, "convert_segment", fail_on_third_chunk)
    report = convert(converter, [src], out, progress=False)
    assert report.outputs == [] and "simulated failure" in report.failures[0][1]
    assert [p.name for p in out.iterdir()] == ["in.wav"]
    assert (out / "in.wav").read_bytes() == b"previous result"


def test_input_expansion_keeps_sub_paths_and_refuses_collisions(vc, vcc_file, tmp_path):
    data = tmp_path / "data"
    for rel in ("a/x.flac", "b/x.flac", "b/deeper/y.flac"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(vcc_file("SF1", 100002), data / rel)

    def written(inputs, out):
        report = convert(vc, inputs, tmp_path / out, progress=False)
        assert not report.failures
        return [p.relative_to(tmp_path / out).as_posix() for p in report.outputs]

    assert written([data], "folder") == ["a/x.wav", "b/deeper/y.wav", "b/x.wav"]  # a folder's sub-paths
    assert written([str(data / "**" / "y.flac")], "glob") == ["b/deeper/y.wav"]  # below the pattern's folder
    assert written([data / "a" / "x.flac"], "file") == ["x.wav"]  # a file's name

    # two files of the same name given directly: the second is refused, not overwritten
    report = convert(vc, [data / "a" / "x.flac", data / "b" / "x.flac"], tmp_path / "out", progress=False)
    assert [p.name for p in report.outputs] == ["x.wav"]
    assert report.failures[0][0] == data / "b" / "x.flac" and "would overwrite" in report.failures[0][1]
    # output folder = input folder: the input is never overwritten
    (data / "c").mkdir()
    save_audio(data / "c" / "z.wav", np.resize(load_audio(vcc_file("SF1", 100002))[0], RATE), RATE)
    before = (data / "c" / "z.wav").read_bytes()
    report = convert(vc, [data / "c"], data / "c", progress=False)
    assert "overwrite the input" in report.failures[0][1]
    assert (data / "c" / "z.wav").read_bytes() == before
    # an empty folder and a pattern that matches nothing are reported
    (tmp_path / "nothing").mkdir()
    report = convert(vc, [tmp_path / "nothing", str(tmp_path / "*.ogg")], tmp_path / "out2", progress=False)
    assert [r for _, r in report.failures] == [
        report.failures[0][1],
        "no files match this pattern",
    ] and "no audio files" in report.failures[0][1]


def test_worker_processes_convert_like_one_process(model_path, vcc_file, tmp_path, caplog):
    """``jobs=2`` (worker processes, one torch thread each): the same files, bytes and failures, in input
    order, as the conversion in this process (one torch thread here too), with the stages of both workers."""
    data = tmp_path / "data"
    data.mkdir()
    for name, (speaker, number) in {"a": ("SF1", 100002), "b": ("TM3", 100002), "d": ("SF1", 100003)}.items():
        shutil.copy(vcc_file(speaker, number), data / f"{name}.flac")
    (data / "c.wav").write_text("this is not audio\n" * 20)
    options = ConversionOptions(energy="source", smooth=1)  # the workers convert with the same options
    with caplog.at_level("INFO", logger="cyclegan_vc.conversion"):
        one = convert(model_path, [data], tmp_path / "one", device="cpu", options=options, jobs=1, progress=False)
        two = convert(model_path, [data], tmp_path / "two", device="cpu", options=options, jobs=2, progress=False)
        # the default: all cores, but one worker per minute of audio at most (here 11 s: this process)
        convert(model_path, [data], tmp_path / "default", device="cpu", progress=False)
    processes = [r.getMessage().split(" with ")[1].split(";")[0] for r in caplog.records if "real-time factor" in r.getMessage()]
    assert processes == ["1 process(es)", "2 process(es)", "1 process(es)"]
    assert [p.name for p in one.outputs] == [p.name for p in two.outputs] == ["a.wav", "b.wav", "d.wav"]
    assert [(p.name, r) for p, r in one.failures] == [(p.name, r) for p, r in two.failures]
    assert [p.name for p, _ in two.failures] == ["c.wav"] and "not a readable audio file" in two.failures[0][1]
    for a, b in zip(one.outputs, two.outputs):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert two.audio_seconds == pytest.approx(one.audio_seconds)
    assert set(two.stage_seconds) == {"analysis", "network", "synthesis"} and all(v > 0 for v in two.stage_seconds.values())
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["a.wav", "b.wav", "d.wav"]  # nothing else left
    with pytest.raises(ValueError, match="jobs"):
        convert(model_path, [data], tmp_path / "bad", jobs=0, progress=False)


def test_worker_processes_convert_the_chunks_of_a_long_file_like_one_process(model_path, vcc_file, tmp_path, monkeypatch, caplog):
    """A file of several chunks with ``jobs=2``: its chunks are converted by the workers and joined here,
    giving the same bytes as the conversion in this process; a short file beside it goes to a worker."""
    from cyclegan_vc.conversion import batch

    real = batch.load_converter

    def short_chunks(*args, **kwargs):  # 2 s chunks (the default is 30 s), so that 6 s of speech make 3
        converter = real(*args, **kwargs)
        converter.chunk_seconds, converter.context_seconds = 2.0, 0.5
        return converter

    monkeypatch.setattr(batch, "load_converter", short_chunks)
    data = tmp_path / "data"
    data.mkdir()
    speech = np.concatenate([load_audio(vcc_file("SF1", n))[0] for n in (100002, 100003, 100004)])
    assert len(speech) > 5 * RATE
    save_audio(data / "long.wav", speech, RATE)
    shutil.copy(vcc_file("TM3", 100002), data / "short.flac")
    with caplog.at_level("INFO", logger="cyclegan_vc.conversion"):
        one = convert(model_path, [data], tmp_path / "one", device="cpu", jobs=1, progress=False)

        def not_here(*args):
            raise AssertionError("a chunk converted in the calling process")

        monkeypatch.setattr(VoiceConverter, "convert_segment", not_here)  # the spawned workers have their own
        two = convert(model_path, [data], tmp_path / "two", device="cpu", jobs=2, progress=False)
    processes = [r.getMessage().split(" with ")[1].split(";")[0] for r in caplog.records if "real-time factor" in r.getMessage()]
    assert processes == ["1 process(es)", "2 process(es)"]
    assert [p.name for p in one.outputs] == [p.name for p in two.outputs] == ["long.wav", "short.wav"]
    assert not one.failures and not two.failures
    for a, b in zip(one.outputs, two.outputs):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert sf.info(str(two.outputs[0])).frames == len(speech)
    # no chunk ran here: these are the workers' stage times, counted
    assert all(two.stage_seconds[k] > 0 for k in ("analysis", "network", "synthesis"))


def test_dead_conversion_workers_are_one_clear_error(model_path, vcc_file, tmp_path, unguarded_script_dies):
    data = tmp_path / "data"
    data.mkdir()
    for number in (100002, 100003):
        shutil.copy(vcc_file("SF1", number), data / f"{number}.flac")
    unguarded_script_dies(f"""
        from cyclegan_vc.conversion import convert
        convert({str(model_path)!r}, [{str(data)!r}], {str(tmp_path / "out")!r}, device="cpu", jobs=2, progress=False)
    """, "convert")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


def test_a_worker_loads_the_model_on_the_device_it_is_given(model_path):
    """``load_in_worker`` (convert's and evaluate's workers) honours its device and options: a CUDA
    evaluator's workers must not be forced onto the CPU."""
    options = ConversionOptions(energy="source", smooth=1)
    converter = load_in_worker(str(model_path), options, device="cpu")
    assert converter.device == torch.device("cpu") and converter.options == options
    assert torch.get_num_threads() == 1
    if torch.cuda.is_available():
        assert load_in_worker(str(model_path), options, device="cuda").device.type == "cuda"
    else:  # asked for, so refused here: not silently the CPU
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_in_worker(str(model_path), options, device="cuda")


def test_the_cli_with_worker_processes_prints_no_pkg_resources_warning(model_path, vcc_file, tmp_path):
    """pyworld imports the deprecated pkg_resources; the warning must reach the user neither from this
    process nor from the spawned workers (which import pyworld again)."""
    data = tmp_path / "data"
    data.mkdir()
    for number in (100002, 100003):
        shutil.copy(vcc_file("SF1", number), data / f"{number}.flac")
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cyclegan_vc.cli", "convert", "--model", str(model_path), str(data),
         "--out", str(tmp_path / "out"), "--device", "cpu", "--jobs", "2", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "with 2 process(es)" in proc.stderr  # the workers ran
    assert "pkg_resources" not in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["100002.wav", "100003.wav"]


def test_a_batch_that_converts_nothing_reports_no_nan(model_path, tmp_path, capsys):
    report = ConversionReport(failures=[(tmp_path / "missing.wav", "no such file")], wall_seconds=0.5)
    assert not re.search(r"\bnan\b", report.summary()) and "nothing converted" in report.summary()
    capsys.readouterr()
    code = cli.main(["convert", "--model", str(model_path), str(tmp_path / "missing.wav"), "--out", str(tmp_path / "out"),
                     "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 1 and "no such file" in printed.out
    assert not re.search(r"\bnan\b", printed.out + printed.err)

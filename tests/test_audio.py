"""Audio input and output: every format in, resampling, validation, atomic writes, and the streamed reads and writes."""

import os

import numpy as np
import pytest
import soundfile as sf

from cyclegan_vc.audio import (
    LIMIT_THRESHOLD,
    AudioError,
    AudioStream,
    limit_peaks,
    load_audio,
    resample,
    resample_stream,
    save_audio,
    to_mono,
    write_wav_stream,
)


def tone(freq=220.0, rate=16000, seconds=0.5, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def dominant_frequency(wave, rate):
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spec)]


@pytest.mark.parametrize(
    "fmt,subtype",
    [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
     ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")],
)
def test_reads_every_format(tmp_path, fmt, subtype):
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, tone(), 16000, format=fmt, subtype=subtype)
    wave, rate = load_audio(path)
    assert rate == 16000 and wave.dtype == np.float64 and wave.ndim == 1
    assert abs(len(wave) - 8000) <= 1
    assert abs(dominant_frequency(wave, rate) - 220) < 5


@pytest.mark.parametrize("orig", [8000, 22050, 44100, 48000])
def test_resamples_to_configured_rate(tmp_path, orig):
    path = tmp_path / "x.wav"
    sf.write(path, tone(440.0, orig, 1.0), orig, subtype="PCM_24")
    wave, rate = load_audio(path, 16000)
    assert rate == 16000
    assert abs(len(wave) - 16000) <= 2
    assert abs(dominant_frequency(wave, rate) - 440) < 3
    assert np.max(np.abs(wave)) == pytest.approx(0.5, abs=0.02)


def test_keeps_rate_when_asked(tmp_path):
    sf.write(tmp_path / "x.wav", tone(rate=22050), 22050)
    assert load_audio(tmp_path / "x.wav", None)[1] == 22050


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(220.0), tone(330.0, amp=0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave, _ = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-6)
    assert to_mono(np.ones((4, 3))).shape == (4,)


def test_resample_identity_and_length():
    x = tone()
    assert resample(x, 16000, 16000) is x
    assert len(resample(x, 16000, 8000)) == 4000


@pytest.mark.parametrize(
    "make,problem",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: sf.write(p, np.zeros(0), 16000), "zero length"),
        (lambda p: p.write_text("this is not audio at all\n" * 20), "not a readable audio file"),
        (lambda p: sf.write(p, np.array([0.1, np.nan] * 4000), 16000, subtype="FLOAT"), "non-finite"),
        (lambda p: sf.write(p, np.array([0.1, np.inf] * 4000), 16000, subtype="FLOAT"), "non-finite"),
        (lambda p: sf.write(p, np.zeros(16000), 16000), "all silent"),
        (lambda p: sf.write(p, tone(seconds=0.02), 16000), "too short"),
    ],
    ids=["empty", "zero-length", "not-audio", "nan", "inf", "silent", "too-short"],
)
def test_bad_input_names_file_and_problem(tmp_path, make, problem):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_save_round_trip(tmp_path, subtype):
    x = tone()
    path = save_audio(tmp_path / "sub" / "y.wav", x, 16000, subtype=subtype)
    info = sf.info(path)
    assert info.subtype == subtype and info.samplerate == 16000
    y, _ = load_audio(path)
    np.testing.assert_allclose(y, x, atol=1e-4 if subtype == "PCM_16" else 1e-7)
    assert [p.name for p in path.parent.iterdir()] == ["y.wav"]  # no temporary left behind


def test_save_failure_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        save_audio(tmp_path / "z.wav", tone(), 16000, subtype="NOT_A_SUBTYPE")
    assert list(tmp_path.iterdir()) == []


def test_limit_peaks_bends_overshoot_instead_of_clipping(tmp_path):
    x = np.linspace(-1.5, 1.5, 3001)
    y = limit_peaks(x)
    inside = np.abs(x) <= LIMIT_THRESHOLD
    np.testing.assert_array_equal(y[inside], x[inside])  # untouched below the knee
    assert np.all(np.abs(y) < 1.0)  # nothing reaches full scale
    assert np.all(np.diff(y) > 0)  # strictly monotonic: distinct overshoots stay distinct (a clip merges them)
    slope = np.diff(y) / np.diff(x)
    assert np.max(np.abs(np.diff(slope))) < 0.05  # the slope is continuous through the knee
    # a streamed block gives the same samples as the whole waveform (sample-wise, no look-ahead)
    np.testing.assert_array_equal(np.concatenate([limit_peaks(x[:1000]), limit_peaks(x[1000:])]), y)
    loud = 2.4 * tone()  # peaks at 1.2
    saved, _ = load_audio(save_audio(tmp_path / "loud.wav", loud, 16000))
    np.testing.assert_allclose(saved, limit_peaks(loud), atol=1 / 32768)
    assert 0.95 < saved.max() < 1.0


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_written_files_get_the_mode_of_a_plain_open(tmp_path):
    """Both writers go through utils.atomic_write: the output is readable as a plain ``open()`` would
    make it (0666 less the umask), not the temporary file's private 0600."""
    saved = save_audio(tmp_path / "saved.wav", tone(), 16000)
    streamed = write_wav_stream(tmp_path / "streamed.wav", [tone()], 16000)
    for path in (saved, streamed):
        assert path.stat().st_mode & 0o777 == _umask_mode(), path.name


def test_a_stream_reads_validates_and_resamples_like_a_whole_load(tmp_path):
    wave = tone(440.0, 44100, 2.5) + 0.1 * tone(3000.0, 44100, 2.5)
    path = tmp_path / "x.wav"
    sf.write(path, np.stack([wave, 0.5 * wave], axis=1), 44100, subtype="FLOAT")
    stream = AudioStream(path)
    assert (stream.rate, stream.frames) == (44100, len(wave))
    whole, _ = load_audio(path, None)
    np.testing.assert_array_equal(np.concatenate(list(stream.blocks(44100))), whole)
    # streamed resampling, in blocks of any size, gives the one-shot samples
    blocks = np.array_split(whole, [1000, 1001, 50000])
    streamed = np.concatenate(list(resample_stream(blocks, 44100, 16000)))
    np.testing.assert_allclose(streamed, resample(whole, 44100, 16000), atol=1e-9)
    np.testing.assert_allclose(np.concatenate(list(stream.blocks(16000))), load_audio(path, 16000)[0], atol=1e-9)


@pytest.mark.parametrize(
    "make,problem",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not audio at all\n" * 20), "not a readable audio file"),
        (lambda p: sf.write(p, np.array([0.1, np.nan] * 4000), 16000, subtype="FLOAT"), "non-finite"),
        (lambda p: sf.write(p, np.zeros(16000), 16000), "all silent"),
        (lambda p: sf.write(p, tone(seconds=0.02), 16000), "too short"),
    ],
    ids=["missing", "empty", "not-audio", "nan", "silent", "too-short"],
)
def test_a_stream_refuses_a_bad_file_before_any_block_is_read(tmp_path, make, problem):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=problem) as err:
        AudioStream(path)
    assert str(path) in str(err.value)


def test_a_streamed_write_pads_or_trims_and_leaves_nothing_when_it_fails(tmp_path):
    path = write_wav_stream(tmp_path / "out" / "a.wav", [tone()[:3000], tone()[3000:5000]], 16000, n_samples=6000)
    data, rate = sf.read(str(path))
    assert rate == 16000 and len(data) == 6000 and not data[5000:].any()
    np.testing.assert_allclose(data[:5000], tone()[:5000], atol=1 / 32768)
    assert len(sf.read(str(write_wav_stream(tmp_path / "b.wav", [tone()], 16000, n_samples=100)))[0]) == 100

    def failing():
        yield tone()
        raise RuntimeError("the converter failed half-way")

    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError, match="half-way"):
        write_wav_stream(path, failing(), 16000)
    assert path.read_bytes() == b"previous result" and [p.name for p in path.parent.iterdir()] == ["a.wav"]

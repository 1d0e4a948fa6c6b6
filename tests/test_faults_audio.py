"""Hostile audio through ``convert --jobs 2``, generated from a seed: every input converts or fails
with one line naming it; the batch never crashes, hangs or loses its worker pool, and nothing
half-written is left behind. The outcome of each case is printed (docs/faults.md lists them)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cyclegan_vc import cli

RATE = 16000


def _speech(vcc_file) -> np.ndarray:
    wave, rate = sf.read(str(vcc_file("SF1", 100002)))
    assert rate == RATE
    return wave


def _write_hostile(folder: Path, speech: np.ndarray, seed: int = 20261206) -> list[str]:
    """The cases, one file (or link) each; returns their names."""
    rng = np.random.default_rng(seed)
    noise = lambda n: rng.integers(0, 256, n, dtype=np.uint8).tobytes()  # noqa: E731
    raw = {
        "random_bytes.wav": noise(20000),
        "riff_header_random_body.wav": b"RIFF" + struct.pack("<I", 20036) + b"WAVEfmt " + noise(20028),
        "flac_magic_random_body.flac": b"fLaC" + noise(20000),
        "ogg_magic_random_body.ogg": b"OggS" + noise(20000),
        "zero_length.wav": b"",
        "text_named_wav.wav": b"this is not audio\n" * 100,
    }
    for name, data in raw.items():
        (folder / name).write_bytes(data)
    waves = {  # name -> (samples, rate, subtype)
        "one_sample.wav": (speech[:1], RATE, "PCM_16"),
        "ten_ms.wav": (speech[:160], RATE, "PCM_16"),
        "nan_samples.wav": (np.where(np.arange(speech.size) % 997 == 0, np.nan, speech), RATE, "FLOAT"),
        "inf_samples.wav": (np.where(np.arange(speech.size) == 5000, np.inf, speech), RATE, "FLOAT"),
        "dc_only.wav": (np.full(RATE, 0.5), RATE, "PCM_16"),
        "all_zeros_30s.wav": (np.zeros(30 * RATE), RATE, "PCM_16"),
        "speech_in_long_silence.wav": (np.concatenate([np.zeros(20 * RATE), speech, np.zeros(20 * RATE)]), RATE, "PCM_16"),
        "clipped.wav": (np.clip(speech * 40, -1, 1), RATE, "PCM_16"),
        "rate_1khz.wav": (speech[::16], 1000, "PCM_16"),
        "rate_384khz.wav": (np.repeat(speech, 24), 384000, "PCM_16"),
        "eight_channels.wav": (np.stack([speech * (c + 1) / 8 for c in range(8)], axis=1), RATE, "PCM_16"),
        "pcm24.wav": (speech, RATE, "PCM_24"),
        "float64.wav": (speech, RATE, "DOUBLE"),
        "unsigned8.wav": (speech, RATE, "PCM_U8"),
        "white_noise.wav": (rng.uniform(-0.5, 0.5, 2 * RATE), RATE, "PCM_16"),
        "control_speech.wav": (speech, RATE, "PCM_16"),
        "control_speech.flac": (speech, RATE, "PCM_16"),
    }
    for name, (samples, rate, subtype) in waves.items():
        sf.write(str(folder / name), samples, rate, subtype=subtype)
    good = (folder / "control_speech.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(good[: len(good) // 3])  # the header claims more than there is
    flipped = bytearray((folder / "control_speech.flac").read_bytes())
    for i in rng.choice(np.arange(100, len(flipped)), 200, replace=False):
        flipped[i] ^= 1 << int(rng.integers(0, 8))
    (folder / "bit_flipped.flac").write_bytes(bytes(flipped))
    huge = bytearray(good)
    huge[4:8] = struct.pack("<I", 0xFFFFFFFF)  # RIFF and data sizes far beyond the file
    huge[40:44] = struct.pack("<I", 0xFFFFFFF0)
    (folder / "sizes_beyond_the_file.wav").write_bytes(bytes(huge))
    (folder / "dangling_link.wav").symlink_to(folder / "nowhere.wav")
    (folder / "loop_a.wav").symlink_to(folder / "loop_b.wav")
    (folder / "loop_b.wav").symlink_to(folder / "loop_a.wav")
    (folder / "link_to_speech.wav").symlink_to(folder / "control_speech.wav")
    unreadable = folder / "unreadable.wav"
    unreadable.write_bytes(good)
    unreadable.chmod(0)
    return sorted(p.name for p in folder.iterdir())


def test_hostile_audio_converts_or_fails_with_one_line_each(vcc_file, tiny_model, tmp_path, capsys):
    inputs, out = tmp_path / "hostile", tmp_path / "out"
    inputs.mkdir()
    names = _write_hostile(inputs, _speech(vcc_file))
    code = cli.main(["convert", str(inputs), "--model", str(tiny_model), "--out", str(out), "--jobs", "2", "--f0", "dio"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err[-3000:]
    assert "worker processes ended abruptly" not in captured.err
    failed = {}
    for line in captured.out.splitlines():
        if line.startswith(f"  {inputs}/"):
            path, reason = line.strip().split(": ", 1)
            failed[Path(path).name] = reason
    converted = sorted(p.with_suffix("").name for p in out.glob("*.wav"))
    outcome = {}
    for name in names:
        stem = Path(name).stem
        if name in failed:
            outcome[name] = f"refused: {failed[name]}"
        elif stem in converted:
            wave, rate = sf.read(str(out / f"{stem}.wav"))
            assert wave.size > 0 and np.isfinite(wave).all() and np.abs(wave).max() <= 1.0, name
            outcome[name] = f"converted ({wave.size / rate:.2f} s)"
    for name in sorted(outcome):
        print(f"{name:<32} {outcome[name]}")
    # control_speech.flac and .wav share an output name: the second in order (.wav) is refused before any work
    assert set(outcome) == set(names), sorted(set(names) - set(outcome))
    assert code == 1  # some inputs failed
    for name in ("control_speech.flac", "link_to_speech.wav", "pcm24.wav", "float64.wav", "eight_channels.wav",
                 "rate_384khz.wav", "clipped.wav", "speech_in_long_silence.wav"):
        assert outcome[name].startswith("converted"), (name, outcome[name])
    for name in ("random_bytes.wav", "zero_length.wav", "nan_samples.wav", "inf_samples.wav", "all_zeros_30s.wav",
                 "one_sample.wav", "dangling_link.wav", "loop_a.wav", "text_named_wav.wav", "flac_magic_random_body.flac"):
        assert outcome[name].startswith("refused"), (name, outcome[name])
    assert "symbolic link to nothing" in failed["dangling_link.wav"]
    assert "would overwrite the conversion of" in failed["control_speech.wav"]
    assert not [p for p in out.rglob(".*")]  # no temporary left behind
    if os.geteuid() != 0:  # root reads a file of mode 0 all the same
        assert outcome["unreadable.wav"].startswith("refused"), outcome["unreadable.wav"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_one_bad_file_among_good_ones_costs_only_itself(vcc_file, tiny_model, tmp_path, capsys, jobs):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    speech = _speech(vcc_file)
    for i in range(3):
        sf.write(str(inputs / f"good{i}.wav"), speech, RATE)
    (inputs / "bad.wav").write_bytes(b"RIFF" + b"\0" * 100)
    code = cli.main(["convert", str(inputs), "--model", str(tiny_model), "--out", str(out), "--jobs", jobs, "--f0", "dio"])
    printed = capsys.readouterr().out
    assert code == 1
    assert sorted(p.name for p in out.glob("*.wav")) == ["good0.wav", "good1.wav", "good2.wav"]
    assert f"{inputs / 'bad.wav'}: not a readable audio file" in printed

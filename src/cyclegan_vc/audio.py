"""Audio input and output: load any format soundfile reads, resample, downmix, validate, save.

Every loaded waveform is a 1-D ``float64`` array in [-1, 1] at the requested sample rate.
Files that cannot be used raise :class:`AudioError`, whose message names the file and the problem.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "load_audio",
    "resample",
    "save_audio",
    "to_mono",
    "validate_waveform",
]

#: File extensions treated as audio when scanning folders (soundfile/libsndfile formats).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".mp3")

#: Peak amplitude below which a recording counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4

#: Shortest analysable clip, in seconds (WORLD needs several pitch periods; the model needs frames).
MIN_DURATION_S = 0.1


class AudioError(ValueError):
    """A file or waveform that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of a ``(samples, channels)`` array; 1-D input is returned unchanged."""
    if data.ndim == 1:
        return data
    if data.ndim != 2:
        raise ValueError(f"expected (samples,) or (samples, channels), got shape {data.shape}")
    return data.mean(axis=1)


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D waveform with soxr (VHQ); identity when the rates match."""
    if orig_rate == target_rate:
        return wave
    out = soxr.resample(np.ascontiguousarray(wave, dtype=np.float64), orig_rate, target_rate, quality="VHQ")
    return np.asarray(out, dtype=np.float64)


def validate_waveform(
    wave: np.ndarray,
    sample_rate: int,
    path: str | os.PathLike | None = None,
    min_duration: float = MIN_DURATION_S,
) -> np.ndarray:
    """Check that a mono waveform is usable for analysis and return it; raise :class:`AudioError`."""
    if wave.size == 0:
        raise AudioError(path, "the file holds no samples (zero length)")
    if not np.all(np.isfinite(wave)):
        bad = int(np.count_nonzero(~np.isfinite(wave)))
        raise AudioError(path, f"{bad} non-finite sample(s) (NaN or infinity)")
    duration = wave.size / sample_rate
    if duration < min_duration:
        raise AudioError(
            path, f"too short to analyse: {duration * 1000:.0f} ms (at least {min_duration * 1000:.0f} ms needed)"
        )
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        raise AudioError(path, f"all silent (peak amplitude {peak:.2e})")
    return wave


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = 16000,
    min_duration: float = MIN_DURATION_S,
) -> tuple[np.ndarray, int]:
    """Read an audio file as a validated mono float64 waveform.

    Args:
        path: any file libsndfile reads (WAV, FLAC, OGG/Vorbis, ...; 8/16/24/32-bit or float).
        sample_rate: resample to this rate (Hz); ``None`` keeps the file's rate.
        min_duration: shortest accepted duration in seconds.

    Returns:
        ``(wave, rate)``: wave has shape ``(samples,)``, values nominally in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for unreadable input
        raise AudioError(path, f"not a readable audio file ({exc})") from None
    wave = to_mono(data)
    if wave.size == 0:
        raise AudioError(path, "the file holds no samples (zero length)")
    if not np.all(np.isfinite(wave)):
        validate_waveform(wave, rate, path, min_duration)
    if sample_rate is not None and rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
        rate = sample_rate
    return validate_waveform(wave, rate, path, min_duration), int(rate)


#: Where :func:`limit_peaks` starts to bend the waveform (full scale is 1).
LIMIT_THRESHOLD = 0.9


def limit_peaks(wave: np.ndarray, threshold: float = LIMIT_THRESHOLD) -> np.ndarray:
    """A sample-wise soft limiter: the identity up to ``threshold``, then a tanh knee towards full scale.

    ``y = sign(x) * (t + (1 - t) * tanh((|x| - t) / (1 - t)))`` for ``|x| > t``: continuous with a
    continuous slope at ``t``, monotonic, and always inside (-1, 1), so that a converted waveform whose
    peaks overshoot full scale (the mapped energy can) is bent rather than hard-clipped. It needs no
    look-ahead, so streamed blocks give the same samples as the whole waveform.
    """
    x = np.asarray(wave, dtype=np.float64)
    over = np.abs(x) > threshold
    if not over.any():
        return x
    out = x.copy()
    knee = 1.0 - threshold
    out[over] = np.sign(x[over]) * (threshold + knee * np.tanh((np.abs(x[over]) - threshold) / knee))
    return out


def save_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write a mono waveform as WAV atomically (temporary file, then rename).

    ``subtype`` is ``"PCM_16"`` (peaks beyond :data:`LIMIT_THRESHOLD` soft-limited by
    :func:`limit_peaks`, so nothing clips) or ``"FLOAT"`` (written as given).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.asarray(wave, dtype=np.float64)
    if subtype == "PCM_16":
        wave = limit_peaks(wave)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, wave, sample_rate, subtype=subtype, format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

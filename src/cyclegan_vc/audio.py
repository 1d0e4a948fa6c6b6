"""Audio input and output: load any format soundfile reads, resample, downmix, validate, save; whole or streamed.

Every loaded waveform is a 1-D ``float64`` array in [-1, 1] at the requested sample rate.
Files that cannot be used raise :class:`AudioError`, whose message names the file and the problem.

Long recordings are streamed: :class:`AudioStream` validates a file and reads it in blocks,
:func:`resample_stream` resamples blocks (the same samples as a one-shot :func:`resample`) and
:func:`write_wav_stream` writes blocks, so memory is bounded by the block size, not the recording.
Every write is atomic (:func:`~cyclegan_vc.utils.atomic_write`): a failure leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

from .utils import atomic_write

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioStream",
    "limit_peaks",
    "load_audio",
    "resample",
    "resample_stream",
    "save_audio",
    "to_mono",
    "validate_waveform",
    "write_wav_stream",
]

log = logging.getLogger(__name__)

#: File extensions treated as audio when scanning folders (soundfile/libsndfile formats).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".mp3")

#: Peak amplitude below which a recording counts as silent (about -80 dBFS).
SILENCE_PEAK = 1e-4

#: Shortest analysable clip, in seconds (WORLD needs several pitch periods; the model needs frames).
MIN_DURATION_S = 0.1

#: Block size (seconds of audio) when a file is streamed.
READ_BLOCK_SECONDS = 10.0


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


def _missing(path: Path) -> str:
    """Why ``path`` is not a file to read."""
    if path.is_symlink():
        return "a symbolic link to nothing (its target is missing, or a loop of links)"
    if path.is_dir():
        return "a folder, not an audio file"
    return "no such file"


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
        raise AudioError(path, _missing(path))
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
    wave = np.asarray(wave, dtype=np.float64)
    if subtype == "PCM_16":
        wave = limit_peaks(wave)
    return atomic_write(path, lambda tmp: sf.write(tmp, wave, sample_rate, subtype=subtype, format="WAV"))


# -- streaming -------------------------------------------------------------------------------------
class AudioStream:
    """A readable, validated audio file, read in blocks.

    The constructor checks the header and scans every sample (finite, not silent, long enough), so
    that a bad file fails before any work is done; :meth:`blocks` then reads it again, block by block.

    Attributes:
        path: the file.
        rate: its sample rate (Hz).
        frames: its length in samples (per channel).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path = Path(path)
        if not path.is_file():
            raise AudioError(path, _missing(path))
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file (0 bytes)")
        try:
            info = sf.info(str(path))
        except Exception as exc:  # libsndfile raises several types for unreadable input
            raise AudioError(path, f"not a readable audio file ({exc})") from None
        self.rate, self.frames = int(info.samplerate), int(info.frames)
        if self.frames <= 0:
            raise AudioError(path, "the file holds no samples (zero length)")
        duration = self.frames / self.rate
        if duration < MIN_DURATION_S:
            raise AudioError(
                path, f"too short to analyse: {duration * 1000:.0f} ms (at least {MIN_DURATION_S * 1000:.0f} ms needed)"
            )
        peak = 0.0
        for block in self._mono_blocks():
            if not np.all(np.isfinite(block)):
                bad = int(np.count_nonzero(~np.isfinite(block)))
                raise AudioError(path, f"{bad} non-finite sample(s) (NaN or infinity)")
            peak = max(peak, float(np.max(np.abs(block))))
        if peak < SILENCE_PEAK:
            raise AudioError(path, f"all silent (peak amplitude {peak:.2e})")

    def _mono_blocks(self) -> Iterator[np.ndarray]:
        block = max(1, int(READ_BLOCK_SECONDS * self.rate))
        try:
            with sf.SoundFile(str(self.path)) as handle:
                while True:
                    data = handle.read(block, dtype="float64", always_2d=True)
                    if len(data):
                        yield data.mean(axis=1)
                    if len(data) < block:
                        return
        except AudioError:
            raise
        except Exception as exc:
            raise AudioError(self.path, f"not a readable audio file ({exc})") from None

    def blocks(self, rate: int) -> Iterator[np.ndarray]:
        """Mono float64 blocks ``(samples,)`` at ``rate`` Hz (:func:`resample_stream` when the file's rate differs)."""
        if rate == self.rate:
            yield from self._mono_blocks()
            return
        yield from resample_stream(self._mono_blocks(), self.rate, rate)


def resample_stream(blocks: Iterable[np.ndarray], rate_in: int, rate_out: int) -> Iterator[np.ndarray]:
    """Resample 1-D blocks from ``rate_in`` to ``rate_out`` Hz with soxr VHQ, streaming: the blocks
    joined are the samples :func:`resample` gives for the whole waveform."""
    stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float64", quality="VHQ")
    for block in blocks:
        yield stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float64), last=False)
    yield stream.resample_chunk(np.zeros(0), last=True)


def write_wav_stream(
    path: str | os.PathLike, pieces: Iterable[np.ndarray], rate: int, n_samples: int | None = None
) -> Path:
    """Write 1-D blocks as a 16-bit mono WAV at ``rate`` Hz atomically; return ``path``.

    ``n_samples`` pads with zeros or trims to exactly that many samples. Samples beyond
    :data:`LIMIT_THRESHOLD` are bent by :func:`limit_peaks`; the number beyond full scale (which a
    hard clip would have cut) is logged. Nothing is left at ``path`` when a block fails to arrive.
    """
    overshoot = 0

    def write(tmp: str) -> None:
        nonlocal overshoot
        written = 0
        with sf.SoundFile(tmp, "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV") as handle:
            for piece in pieces:
                if n_samples is not None:
                    piece = piece[: max(0, n_samples - written)]
                overshoot += int(np.count_nonzero(np.abs(piece) > 1.0))
                handle.write(limit_peaks(piece))
                written += len(piece)
            if n_samples is not None and written < n_samples:
                handle.write(np.zeros(n_samples - written))

    path = atomic_write(path, write)
    if overshoot:
        log.info("%s: %d sample(s) beyond full scale were soft-limited", path, overshoot)
    return path

"""Conversion of new recordings with a trained model: waveform -> WORLD -> generator -> waveform.

Per direction (``"A2B"``: source speaker A to target B; ``"B2A"`` the reverse):

- F0 by the log-Gaussian normalised transform with the two speakers' stored statistics;
- aperiodicity copied from the input;
- mel-cepstra normalised with the *input* speaker's statistics, passed through the generator,
  de-normalised with the *output* speaker's statistics; the frame count is padded to a multiple of
  4 (the generator downsamples twice) and trimmed back;
- WORLD synthesis, padded or trimmed to the input's length (same duration in and out).

Long inputs are converted in chunks. Boundaries lie near every ``chunk_seconds`` of audio, each
moved to the quietest 10 ms within a quarter chunk (at most 1 s) of its nominal place; every chunk
is analysed and converted with ``context_seconds`` of audio on both sides (so F0 tracking and the
generator's receptive field are unaffected near the joins), and neighbouring chunks are joined
with a 20 ms linear cross-fade centred on the boundary. What differs between chunks, the
generator's instance-normalisation statistics and the phase of WORLD's excitation pulses, is
inaudible at a quiet point. An input of up to 1.5 chunks is converted in one piece.

Files are converted as streams: read in blocks (once to validate: readable, finite, not silent;
once to convert), resampled to the model's rate with a streaming resampler (the same samples as a
one-shot resample), converted chunk by chunk and written to a temporary file that is renamed over
the output only when the whole file succeeded. Memory is therefore bounded by the chunk size, not
by the recording's length, and a failed input never leaves a partial output behind.

Speed: the time goes to WORLD (pyworld), not to the network; see ``benchmarks/convert.py``.
:attr:`VoiceConverter.timings` accumulates the seconds spent in analysis, network and synthesis.
:func:`convert` with ``jobs`` uses worker processes: whole files, or the chunks of a long file (then
at most ``workers + 1`` chunks are in flight, so memory stays bounded, and the joins are made in
order in the calling process: the same output as without workers).
"""

from __future__ import annotations

import collections
import glob
import itertools
import logging
import math
import os
import tempfile
import time
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .audio import (
    AUDIO_EXTENSIONS,
    MIN_DURATION_S,
    SILENCE_PEAK,
    AudioError,
    limit_peaks,
    resample,
    validate_waveform,
)
from .features import FeatureConfig, WorldFeatures, analyze, synthesize
from .stats import SpeakerStats, convert_f0, denormalize, f0_search_range, normalize
from .utils import WorkersDied

__all__ = [
    "ENERGY_MODES",
    "F0_RANGES",
    "load_converter",
    "DIRECTIONS",
    "Chunk",
    "ConversionReport",
    "VoiceConverter",
    "convert",
    "expand_inputs",
    "plan_chunks",
    "resolve_device",
]

log = logging.getLogger(__name__)

#: direction -> (input speaker role, output speaker role, generator role)
DIRECTIONS = {"A2B": ("A", "B", "G_ab"), "B2A": ("B", "A", "G_ba")}
FRAME_MULTIPLE = 4  # the generator downsamples twice by 2
FADE_SECONDS = 0.01  # half the cross-fade; also the window of the quiet-point search
READ_BLOCK_SECONDS = 10.0  # block size when streaming a file
#: convert() with default jobs starts one worker process per this many seconds of audio in the batch at most
WORKER_AUDIO_SECONDS = 60.0


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _direction(direction: str) -> tuple[str, str, str]:
    try:
        return DIRECTIONS[direction]
    except KeyError:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}") from None


# -- chunking ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """One chunk of a long input, in samples at the model's rate.

    The chunk owns ``[start, end)`` of the output; ``[lo, hi)`` is what is analysed (the chunk with
    ``context_seconds`` of audio and the 10 ms cross-fade margin on each side, clipped to the input).
    ``last`` marks the final chunk (its ``end`` is the input's length).
    """

    start: int
    end: int
    lo: int
    hi: int
    last: bool


class _Chunker:
    """Chunk boundaries of a waveform that arrives in blocks (see :func:`plan_chunks`).

    Holds at most about two chunks of samples: samples before the current chunk's analysis window
    are dropped as soon as it is planned.
    """

    def __init__(self, blocks: Iterable[np.ndarray], rate: int, chunk_seconds: float, context_seconds: float):
        self.blocks = iter(blocks)
        self.fade = int(FADE_SECONDS * rate)
        self.chunk = max(int(round(chunk_seconds * rate)), 8 * self.fade)
        self.context = int(round(context_seconds * rate))
        self.reach = min(self.chunk // 4, rate)
        self.buf = np.zeros(0)
        self.buf_start = 0  # absolute index of buf[0]
        self.eof = False

    @property
    def available(self) -> int:
        """Absolute end of the samples read so far."""
        return self.buf_start + len(self.buf)

    def fill(self, upto: int) -> None:
        """Read blocks until samples ``[.., upto)`` are buffered or the input ends."""
        parts = [self.buf] if len(self.buf) else []
        have = self.available
        while have < upto and not self.eof:
            try:
                block = np.asarray(next(self.blocks), dtype=np.float64).reshape(-1)
            except StopIteration:
                self.eof = True
                break
            parts.append(block)
            have += len(block)
        if have > self.available:
            self.buf = parts[0] if len(parts) == 1 else np.concatenate(parts)

    def samples(self, lo: int, hi: int) -> np.ndarray:
        return self.buf[lo - self.buf_start : hi - self.buf_start]

    def quiet_point(self, nominal: int) -> int:
        """The centre of the quietest 10 ms within ``reach`` samples of ``nominal``."""
        win = self.fade
        lo, hi = max(win, nominal - self.reach), nominal + self.reach
        frames = self.samples(lo, hi)[: (hi - lo) // win * win].reshape(-1, win)
        return lo + int(np.argmin(np.square(frames).sum(axis=1))) * win + win // 2

    def __iter__(self) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Yield ``(chunk, samples[lo:hi])`` in order."""
        start, k = 0, 1
        while True:
            nominal = k * self.chunk
            # a boundary near `nominal` exists when more than half a chunk follows it
            self.fill(nominal + self.chunk // 2 + 1)
            last = self.available <= nominal + self.chunk // 2
            if last:
                end = self.available  # the input ended
            else:
                self.fill(nominal + self.reach)
                end = self.quiet_point(nominal)
            margin = 0 if (start == 0 and last) else self.fade + self.context
            lo = max(0, start - margin)
            self.fill(end + margin)
            hi = min(self.available, end + margin)
            yield Chunk(start, end, lo, hi, last), self.samples(lo, hi)
            if last:
                return
            # drop what no later chunk analyses (a view: no copy; the next fill() compacts)
            keep = max(self.buf_start, end - self.fade - self.context)
            self.buf, self.buf_start = self.samples(keep, self.available), keep
            start, k = end, k + 1


def plan_chunks(wave: np.ndarray, rate: int, chunk_seconds: float = 30.0, context_seconds: float = 1.0) -> list[Chunk]:
    """The chunks a waveform ``(samples,)`` at ``rate`` Hz is converted in (what
    :meth:`VoiceConverter.convert` does with the same settings). One chunk when the input is at
    most 1.5 chunks long."""
    return [chunk for chunk, _ in _Chunker([np.asarray(wave, dtype=np.float64)], rate, chunk_seconds, context_seconds)]


# -- the converter -------------------------------------------------------------------------------
ENERGY_MODES = ("generator", "source")
"""Sources of the output's c0 (frame energy). ``"generator"`` is the paper's conversion. ``"source"``
keeps the input's energy contour (mean-variance mapped): c0 carries loudness, not speaker identity,
MCD excludes it, and a briefly trained generator's c0 jitters from frame to frame (measured in the
README, Results), which DNSMOS hears as roughness."""

#: Where the F0 estimator searches in the input: ``"full"`` (the model's ``f0_floor``-``f0_ceil``, as
#: in preparation) or ``"speaker"`` (the input speaker's ``exp(mu -/+ 3 sigma)`` of log-F0, from its
#: statistics; a named deviation for speed, about 1.6-2x faster harvest, measured in the README).
F0_RANGES = ("full", "speaker")


def smooth_frames(x: np.ndarray, passes: int) -> np.ndarray:
    """``passes`` applications of the binomial kernel ``[1, 2, 1] / 4`` along the first axis (time).

    The edges repeat the first and last frame. Its response at a modulation frequency ``w`` (rad per
    frame) is ``cos(w / 2) ** (2 * passes)``: zero at the frame rate's Nyquist (a period-2 pattern,
    the pixel shuffle's mark), ``0.5 ** passes`` at period 4, and 0.90 ** passes at 20 Hz with 5 ms
    frames (speech's envelope moves slower). ``passes=0`` returns ``x`` unchanged.
    """
    if passes < 0:
        raise ValueError(f"smooth passes must be >= 0, got {passes}")
    y = np.asarray(x, dtype=np.float64)
    for _ in range(passes):
        padded = np.concatenate([y[:1], y, y[-1:]])
        y = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return y


class VoiceConverter:
    """Both generators of a trained model with the speakers' statistics and feature settings.

    >>> vc = VoiceConverter.load("runs/demo")                  # run directory or exported model file
    >>> wave, rate = vc.convert(wave, 44100, direction="A2B")  # any rate in, the model's rate out
    >>> vc.convert_file("in.flac", "out/in.wav", direction="B2A", keep_rate=True)

    Args:
        generators: ``{"G_ab": A->B, "G_ba": B->A}`` generators (moved to ``device``, eval mode).
        stats: ``{"A": SpeakerStats, "B": SpeakerStats}`` of the training data.
        features: the WORLD settings the model was trained with (rate, frame period, F0 method).
        speakers: role -> speaker name, for messages.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        chunk_seconds: nominal chunk length of long inputs (seconds of audio).
        context_seconds: audio analysed on each side of a chunk and discarded (seconds).
        energy: where the 0th mel-cepstral coefficient (frame energy) of the output comes from:
            ``"generator"`` (the paper: all coefficients from the generator) or ``"source"`` (the
            input's own c0, mean-variance mapped to the output speaker's c0 statistics; the generator
            gives c1 and up). See :data:`ENERGY_MODES`.
        smooth: passes of :func:`smooth_frames` over the generator's output along time (0: none,
            the paper). A deviation: it removes the period-2 frame pattern that the generator's
            pixel shuffles leave (measured in the README, Results); a source c0 is not smoothed.
        f0_range: where the F0 estimator searches, ``"full"`` or ``"speaker"`` (:data:`F0_RANGES`;
            :func:`~cyclegan_vc.stats.f0_search_range` of the input speaker's statistics).
        step: training iterations behind the weights, for reports (:meth:`load` sets it).

    Attributes:
        step: as given (``None``: not known).
        timings: cumulative wall seconds per stage, ``{"analysis", "network", "synthesis"}``
            (``"network"`` includes the F0 transform and the (de-)normalisation); reset it with
            :meth:`reset_timings`.
    """

    def __init__(
        self,
        generators: dict[str, torch.nn.Module],
        stats: dict[str, SpeakerStats],
        features: FeatureConfig,
        speakers: dict[str, str] | None = None,
        device: str | torch.device = "cpu",
        chunk_seconds: float = 30.0,
        context_seconds: float = 1.0,
        energy: str = "generator",
        smooth: int = 0,
        step: int | None = None,
        f0_range: str = "full",
    ):
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError("chunk_seconds must be > 0 and context_seconds >= 0")
        _check_options(energy, smooth, f0_range)
        missing = sorted({"G_ab", "G_ba"} - set(generators)) + sorted({"A", "B"} - set(stats))
        if missing:
            raise ValueError(f"VoiceConverter needs generators G_ab, G_ba and stats A, B; missing {missing}")
        self.device = resolve_device(device)
        self.generators = {name: g.to(self.device).eval() for name, g in generators.items()}
        self.stats = stats
        self.features = features
        self.speakers = speakers or {"A": "A", "B": "B"}
        self.chunk_seconds = float(chunk_seconds)
        self.context_seconds = float(context_seconds)
        self.energy = energy
        self.smooth = int(smooth)
        self.f0_range = f0_range
        self.step = None if step is None else int(step)
        self.timings: dict[str, float] = {}
        self.reset_timings()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "auto", **kwargs) -> "VoiceConverter":
        """Load an exported model (file) or the best model of a run directory.

        ``kwargs`` go to the constructor (``chunk_seconds``, ``context_seconds``, ``energy``, ``smooth``,
        ``f0_range``).
        """
        from .checkpoint import load_model

        device = resolve_device(device)
        model = load_model(path, device=device)
        return cls(
            generators=model.generators,
            stats=model.stats,
            features=model.features,
            speakers=model.speakers,
            device=device,
            step=model.step,
            **kwargs,
        )

    @property
    def sample_rate(self) -> int:
        """The model's sample rate (Hz): conversion happens, and output comes, at this rate."""
        return self.features.sample_rate

    def reset_timings(self) -> None:
        self.timings = {"analysis": 0.0, "network": 0.0, "synthesis": 0.0}

    def _config(self, f0_method: str | None) -> FeatureConfig:
        return self.features if f0_method in (None, self.features.f0_method) else self.features.replace(f0_method=f0_method)

    def f0_search_range(self, direction: str = "A2B") -> tuple[float, float]:
        """``(floor, ceil)`` Hz that the F0 estimator searches in an input of ``direction``'s source speaker."""
        src, _, _ = _direction(direction)
        floor, ceil = self.features.f0_floor, self.features.f0_ceil
        if self.f0_range == "speaker":
            return f0_search_range(self.stats[src], floor, ceil)
        return float(floor), float(ceil)

    # -- features ---------------------------------------------------------------------------
    @torch.inference_mode()
    def convert_mcep(self, mcep: np.ndarray, direction: str = "A2B") -> np.ndarray:
        """``(T, D)`` mel-cepstra of the input speaker -> ``(T, D)`` float64 of the output speaker.

        The frame count is padded to a multiple of 4 by repeating the last frame and trimmed back.
        With ``smooth`` the generator's output is smoothed along time (:func:`smooth_frames`); with
        ``energy="source"`` the output's c0 is then the input's c0 normalised with the input speaker's
        statistics and de-normalised with the output speaker's.
        """
        src, tgt, gen = _direction(direction)
        mcep = np.asarray(mcep, dtype=np.float64)
        if mcep.ndim != 2 or mcep.shape[0] == 0:
            raise ValueError(f"mcep must be (frames, dims) with frames > 0, got shape {mcep.shape}")
        frames = mcep.shape[0]
        norm = normalize(mcep, self.stats[src]).astype(np.float32)
        pad = (-frames) % FRAME_MULTIPLE
        if pad:
            norm = np.concatenate([norm, np.repeat(norm[-1:], pad, axis=0)])
        x = torch.from_numpy(np.ascontiguousarray(norm.T))[None].to(self.device)
        y = self.generators[gen](x)[0].float().cpu().numpy().T[:frames].astype(np.float64)
        y = smooth_frames(y, self.smooth)
        if self.energy == "source":
            y[:, 0] = norm[:frames, 0]
        return denormalize(y, self.stats[tgt])

    def convert_features(self, feats: WorldFeatures, direction: str = "A2B") -> WorldFeatures:
        """Convert WORLD features: F0 transform, mel-cepstra through the generator, aperiodicity copied."""
        src, tgt, _ = _direction(direction)
        return WorldFeatures(
            f0=convert_f0(feats.f0, self.stats[src], self.stats[tgt]),
            mcep=self.convert_mcep(feats.mcep, direction),
            ap=feats.ap,
        )

    # -- waveforms --------------------------------------------------------------------------
    def _convert_segment(self, wave: np.ndarray, direction: str, config: FeatureConfig) -> np.ndarray:
        """One piece: ``(samples,)`` at the model's rate -> converted ``(samples,)``."""
        t0 = time.perf_counter()
        feats = analyze(wave, config, f0_range=None if self.f0_range == "full" else self.f0_search_range(direction))
        t1 = time.perf_counter()
        converted = self.convert_features(feats, direction)
        del feats
        t2 = time.perf_counter()
        out = synthesize(converted, config)
        t3 = time.perf_counter()
        self.timings["analysis"] += t1 - t0
        self.timings["network"] += t2 - t1
        self.timings["synthesis"] += t3 - t2
        if len(out) < len(wave):
            out = np.pad(out, (0, len(wave) - len(out)))
        return out[: len(wave)]

    def _iter_converted(
        self,
        blocks: Iterable[np.ndarray],
        direction: str,
        config: FeatureConfig,
        on_chunk: Callable[[int], None] | None = None,
        pool: Executor | None = None,
        window: int = 2,
    ) -> Iterator[np.ndarray]:
        """Convert a waveform arriving in blocks (model rate); yield the output in order, as many
        samples in total as came in. ``on_chunk(samples)`` is called after each chunk. With ``pool``
        (worker processes started by :func:`convert`) the chunks are converted there, up to ``window``
        at a time; the joins are made here, in order, so the output is the same."""
        chunker = _Chunker(blocks, config.sample_rate, self.chunk_seconds, self.context_seconds)
        fade = chunker.fade
        ramp = np.linspace(0.0, 1.0, 2 * fade + 2)[1:-1]  # ramp + ramp[::-1] == 1
        tail = None  # the faded-out end of the previous chunk, over [start - fade, start + fade)
        if pool is None:
            segments = ((chunk, self._convert_segment(samples, direction, config)) for chunk, samples in chunker)
        else:
            segments = self._pooled_segments(chunker, direction, config, pool, window)
        for chunk, seg in segments:
            a = chunk.start - fade if chunk.start else 0
            b = chunk.end if chunk.last else chunk.end + fade
            piece = seg[a - chunk.lo : b - chunk.lo].copy()
            if tail is not None:
                piece[: 2 * fade] = piece[: 2 * fade] * ramp + tail
            if not chunk.last:
                piece[-2 * fade :] *= ramp[::-1]
                piece, tail = piece[: -2 * fade], piece[-2 * fade :]
            if on_chunk is not None:
                on_chunk(chunk.end - chunk.start)
            yield piece

    def _pooled_segments(
        self, chunker: Iterable[tuple[Chunk, np.ndarray]], direction: str, config: FeatureConfig, pool: Executor, window: int
    ) -> Iterator[tuple[Chunk, np.ndarray]]:
        """``(chunk, converted segment)`` in order, the segments converted by ``pool``'s workers with up
        to ``window`` in flight (memory stays bounded); their stage times are added to :attr:`timings`."""
        pending: collections.deque = collections.deque()
        try:
            for chunk, samples in chunker:
                pending.append((chunk, pool.submit(_segment_in_worker, samples, direction, config)))
                if len(pending) >= window:
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        finally:  # an abandoned file (a failed chunk, an interrupt): its other chunks are not needed
            for _, future in pending:
                future.cancel()

    def _collect(self, chunk: Chunk, future: Future) -> tuple[Chunk, np.ndarray]:
        seg, timings = future.result()
        self._add_timings(timings)
        return chunk, seg

    def _add_timings(self, timings: dict[str, float]) -> None:
        """Add another process's seconds per stage to :attr:`timings`."""
        for stage, seconds in timings.items():
            self.timings[stage] += seconds

    def convert(
        self,
        waveform: np.ndarray,
        sample_rate: int,
        direction: str = "A2B",
        f0_method: str | None = None,
    ) -> tuple[np.ndarray, int]:
        """Convert a waveform: mono ``(samples,)`` or ``(samples, channels)`` (channels averaged), any rate.

        ``f0_method`` overrides the model's F0 estimator (``"harvest"`` or ``"dio"``).
        Returns ``(waveform, rate)``: float64 ``(samples,)`` at the model's rate (:attr:`sample_rate`),
        the same duration as the input. Raises :class:`AudioError` for an unusable waveform.
        Long inputs are converted in chunks (WORLD features exist for one chunk at a time); the
        input and output waveforms themselves are whole arrays here, :meth:`convert_file` streams.
        """
        _direction(direction)
        config = self._config(f0_method)
        wave = np.asarray(waveform, dtype=np.float64)
        if wave.ndim == 2 and wave.shape[1] > wave.shape[0]:
            raise AudioError(None, f"expected (samples, channels), got shape {wave.shape}: transpose channel-first arrays")
        if wave.ndim == 2:
            wave = wave.mean(axis=1)
        elif wave.ndim != 1:
            raise AudioError(None, f"expected (samples,) or (samples, channels), got shape {wave.shape}")
        if wave.size and not np.all(np.isfinite(wave)):
            validate_waveform(wave, int(sample_rate))  # names the problem
        wave = resample(wave, int(sample_rate), self.sample_rate)
        validate_waveform(wave, self.sample_rate)
        out = np.empty(len(wave))
        pos = 0
        for piece in self._iter_converted([wave], direction, config):
            out[pos : pos + len(piece)] = piece
            pos += len(piece)
        assert pos == len(wave), (pos, len(wave))
        return out, self.sample_rate

    def convert_file(
        self,
        path: str | os.PathLike,
        out_path: str | os.PathLike,
        direction: str = "A2B",
        f0_method: str | None = None,
        keep_rate: bool = False,
        on_chunk: Callable[[float], None] | None = None,
    ) -> Path:
        """Convert one audio file into a 16-bit WAV at the model's rate (``keep_rate``: the input's).

        The file is streamed (memory bounded by the chunk size) and the output written atomically:
        nothing is left at ``out_path`` if anything fails. ``on_chunk(seconds)`` is called after
        each converted chunk with its duration. Returns ``out_path``; raises :class:`AudioError`
        (naming the file) for unusable input.
        """
        return self._convert_file(path, out_path, direction, f0_method, keep_rate, on_chunk)

    def _convert_file(
        self,
        path: str | os.PathLike,
        out_path: str | os.PathLike,
        direction: str,
        f0_method: str | None,
        keep_rate: bool,
        on_chunk: Callable[[float], None] | None,
        pool: Executor | None = None,
        window: int = 2,
    ) -> Path:
        """:meth:`convert_file`, with the chunks converted in ``pool`` (see :meth:`_iter_converted`)."""
        _direction(direction)
        config = self._config(f0_method)
        path, out_path = Path(path), Path(out_path)
        source = _AudioSource(path)
        out_rate = source.rate if keep_rate else self.sample_rate
        callback = None if on_chunk is None else (lambda n: on_chunk(n / self.sample_rate))
        pieces = self._iter_converted(source.blocks(self.sample_rate), direction, config, callback, pool, window)
        if out_rate != self.sample_rate:
            pieces = _resample_stream(pieces, self.sample_rate, out_rate)
        try:
            _write_wav(out_path, pieces, out_rate, n_samples=source.frames if keep_rate else None)
        except AudioError as exc:
            raise AudioError(path, exc.problem) from None
        return out_path


# -- streaming file input and output -------------------------------------------------------------
class _AudioSource:
    """A readable, validated audio file: header checked and samples scanned (peak, finiteness)
    before any conversion, so that bad files fail before work is done."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise AudioError(path, "no such file")
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
                raise AudioError(path, f"{int(np.count_nonzero(~np.isfinite(block)))} non-finite sample(s) (NaN or infinity)")
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
        """Mono float64 blocks at ``rate`` Hz (soxr VHQ, streaming; identical to a one-shot resample)."""
        if rate == self.rate:
            yield from self._mono_blocks()
            return
        yield from _resample_stream(self._mono_blocks(), self.rate, rate)


def _resample_stream(blocks: Iterable[np.ndarray], rate_in: int, rate_out: int) -> Iterator[np.ndarray]:
    stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float64", quality="VHQ")
    for block in blocks:
        yield stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float64), last=False)
    yield stream.resample_chunk(np.zeros(0), last=True)


def _write_wav(path: Path, pieces: Iterable[np.ndarray], rate: int, n_samples: int | None = None) -> None:
    """Write blocks as a 16-bit mono WAV atomically (temporary file in the same folder, then rename).

    ``n_samples`` pads with zeros or trims to exactly that many samples. Samples beyond
    :data:`~cyclegan_vc.audio.LIMIT_THRESHOLD` are bent by :func:`~cyclegan_vc.audio.limit_peaks`;
    the number beyond full scale (which a hard clip would have cut) is logged.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    written = overshoot = 0
    try:
        with sf.SoundFile(tmp, "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV") as handle:
            for piece in pieces:
                if n_samples is not None:
                    piece = piece[: max(0, n_samples - written)]
                overshoot += int(np.count_nonzero(np.abs(piece) > 1.0))
                handle.write(limit_peaks(piece))
                written += len(piece)
            if n_samples is not None and written < n_samples:
                handle.write(np.zeros(n_samples - written))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if overshoot:
        log.info("%s: %d sample(s) beyond full scale were soft-limited", path, overshoot)


# -- batch conversion of files -------------------------------------------------------------------
@dataclass
class ConversionReport:
    """What a batch conversion produced.

    Attributes:
        outputs: written files, in input order.
        failures: ``(input, reason)`` for every input that was skipped.
        audio_seconds: duration of the converted inputs (s).
        wall_seconds: wall time of the conversions (s), model loading excluded.
        stage_seconds: wall time per stage (``analysis``, ``network``, ``synthesis``).
    """

    outputs: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of audio (below 1 is faster than real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def summary(self) -> str:
        """A few lines: what was converted, how fast, and every failure with its reason."""
        lines = [
            f"converted {len(self.outputs)} file(s), {self.audio_seconds:.1f} s of audio in "
            f"{self.wall_seconds:.1f} s (real-time factor {self.real_time_factor:.3f})"
        ]
        if self.stage_seconds and self.audio_seconds:
            lines.append(
                "  real-time factor by stage: "
                + ", ".join(f"{k} {v / self.audio_seconds:.3f}" for k, v in self.stage_seconds.items())
            )
        if self.failures:
            lines.append(f"{len(self.failures)} input(s) failed:")
            lines += [f"  {path}: {reason}" for path, reason in self.failures]
        return "\n".join(lines)


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob pattern, before its first component with a wildcard."""
    parts = list(itertools.takewhile(lambda part: not glob.has_magic(part), Path(pattern).parts))
    return Path(*parts) if parts else Path(".")


def _expand(item: str | os.PathLike, exclude: Path | None = None) -> tuple[list[tuple[Path, Path]], str | None]:
    """One input -> ``([(file, output name relative to out)], problem or None)``."""
    path = Path(item)
    if path.is_dir():
        root = path.resolve()
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in AUDIO_EXTENSIONS
            and not p.name.startswith(".")
            and not (exclude is not None and p.resolve().is_relative_to(exclude) and not root.is_relative_to(exclude))
        )
        if not files:
            return [], f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder"
        return [(p, p.relative_to(path)) for p in files], None
    if path.exists():
        return [(path, Path(path.name))], None
    if glob.has_magic(str(item)):
        base = _glob_base(str(item))
        matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True)) if Path(m).is_file()]
        if not matches:
            return [], "no files match this pattern"
        return [(m, m.relative_to(base) if m.is_relative_to(base) else Path(m.name)) for m in matches], None
    return [], "no such file or folder"


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Files, folders (recursive) or glob patterns -> ``(file, output name)`` pairs.

    A folder's files keep their path relative to the folder; a glob's matches their path relative
    to the pattern's folder part (``data/**/*.wav`` -> ``spk1/a.wav``); a file its name. Inputs that
    match nothing are left out (:func:`convert` reports them).
    """
    return [pair for item in inputs for pair in _expand(item)[0]]


def _duration(path: Path) -> float:
    """Seconds of audio in a file, 0 when its header cannot be read (the conversion reports why)."""
    try:
        return float(sf.info(str(path)).duration)
    except Exception:
        return 0.0


def _convert_one(
    converter: VoiceConverter,
    path: Path,
    target: Path,
    direction: str,
    f0: str | None,
    keep_rate: bool,
    on_chunk: Callable[[float], None],
    pool: Executor | None = None,
    window: int = 2,
) -> str | None:
    """Convert one file (its chunks in ``pool`` when given); return why it failed, or ``None``."""
    try:
        converter._convert_file(path, target, direction, f0, keep_rate, on_chunk, pool, window)
    except AudioError as exc:
        return exc.problem
    except BrokenProcessPool:  # the workers died: not this file's fault
        raise
    except Exception as exc:  # one bad file must not end the batch
        log.debug("conversion of %s failed", path, exc_info=True)
        return f"conversion failed: {type(exc).__name__}: {exc}"
    return None


def _check_options(energy: str | None, smooth: int | None, f0_range: str | None = None) -> None:
    if f0_range is not None and f0_range not in F0_RANGES:
        raise ValueError(f"f0_range must be one of {F0_RANGES}, got {f0_range!r}")
    if energy is not None and energy not in ENERGY_MODES:
        raise ValueError(f"energy must be one of {ENERGY_MODES}, got {energy!r}")
    if smooth is not None and (isinstance(smooth, bool) or int(smooth) != smooth or smooth < 0):
        raise ValueError(f"smooth must be a whole number of passes >= 0, got {smooth!r}")


def load_converter(
    model: str | os.PathLike | VoiceConverter,
    device: str = "auto",
    energy: str | None = None,
    smooth: int | None = None,
    f0_range: str | None = None,
) -> VoiceConverter:
    """``model`` itself when it is a loaded :class:`VoiceConverter` (its ``energy``, ``smooth`` and
    ``f0_range`` set when given), else the model loaded from a run directory or file (defaults
    ``"generator"``, 0, ``"full"``). Raises ``ValueError`` for an unknown ``energy`` or ``f0_range`` or
    a bad ``smooth`` before anything is loaded."""
    _check_options(energy, smooth, f0_range)
    if not isinstance(model, VoiceConverter):
        return VoiceConverter.load(
            model, device=device, energy=energy or "generator", smooth=smooth or 0, f0_range=f0_range or "full"
        )
    if energy is not None:
        model.energy = energy
    if smooth is not None:
        model.smooth = int(smooth)
    if f0_range is not None:
        model.f0_range = f0_range
    return model


def _plan(files: list[tuple[Path, Path]], out: Path) -> list[tuple[Path, Path, str | None]]:
    """``(input, output, problem or None)`` for every file: an output that is the input itself, or
    that an earlier input's conversion would write, is a problem decided before any work (so the
    result does not depend on the order in which parallel workers finish)."""
    planned: dict[Path, Path] = {}  # resolved output -> the input that writes it
    plan = []
    for path, rel in files:
        target = out / rel.with_suffix(".wav")
        key = target.resolve()
        if key in planned:
            problem = f"output {target} would overwrite the conversion of {planned[key]}"
        elif key == path.resolve():
            problem = "output would overwrite the input (choose another output folder)"
        else:
            problem = None
            planned[key] = path
        plan.append((path, target, problem))
    return plan


_WORKER: dict = {}


def load_in_worker(model: str, energy: str, smooth: int, f0_range: str) -> VoiceConverter:
    """The model in a spawned worker process (of :func:`convert` or ``evaluate``): one torch thread, on the CPU."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    return VoiceConverter.load(model, device="cpu", energy=energy, smooth=smooth, f0_range=f0_range)


def _init_worker(model: str, energy: str, smooth: int, f0_range: str) -> None:
    _WORKER["converter"] = load_in_worker(model, energy, smooth, f0_range)


def _segment_in_worker(samples: np.ndarray, direction: str, config: FeatureConfig) -> tuple[np.ndarray, dict[str, float]]:
    """One chunk of a long file in a worker process: ``(converted segment, seconds per stage)``."""
    converter: VoiceConverter = _WORKER["converter"]
    converter.reset_timings()
    return converter._convert_segment(samples, direction, config), dict(converter.timings)


def _convert_in_worker(
    path: Path, target: Path, direction: str, f0: str | None, keep_rate: bool
) -> tuple[str | None, dict[str, float]]:
    """One file in a worker process: ``(problem or None, seconds per stage)``."""
    converter: VoiceConverter = _WORKER["converter"]
    converter.reset_timings()
    problem = _convert_one(converter, path, target, direction, f0, keep_rate, lambda seconds: None)
    return problem, dict(converter.timings)


def convert(
    model: str | os.PathLike | VoiceConverter,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    direction: str = "A2B",
    f0: str | None = None,
    device: str = "auto",
    keep_rate: bool = False,
    energy: str | None = None,
    smooth: int | None = None,
    f0_range: str | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert every input into ``out`` as ``<name>.wav``; bad inputs are reported and skipped.

    Args:
        model: run directory, exported model file or a loaded :class:`VoiceConverter`.
        inputs: audio files, folders (recursive; sub-paths are kept under ``out``) or glob patterns.
        out: output folder.
        direction: ``"A2B"`` or ``"B2A"``.
        f0: F0 estimator (``"harvest"`` / ``"dio"``); ``None`` uses the model's.
        device: where the generators run (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        keep_rate: write at each input's sample rate instead of the model's.
        energy: ``"generator"`` or ``"source"`` (see :class:`VoiceConverter`); ``None`` keeps a given
            converter's setting, or ``"generator"`` for a model loaded here.
        smooth: passes of :func:`smooth_frames` (see :class:`VoiceConverter`); ``None`` keeps a given
            converter's setting, or 0 for a model loaded here.
        f0_range: ``"full"`` or ``"speaker"`` (see :class:`VoiceConverter`); ``None`` keeps a given
            converter's setting, or ``"full"`` for a model loaded here.
        jobs: worker processes, each with one torch thread (default: all cores, but at most one per
            :data:`WORKER_AUDIO_SECONDS` of audio in the batch, since starting a worker costs about as
            much as converting 15 s; 1: in this process). Files long enough to be converted in several
            chunks come first, one at a time, their chunks converted by the workers (read, joined
            and written here: the same output); then the others, a file per worker. Used when
            ``model`` is a path, there is more than one file or chunk, and the model runs on the CPU;
            otherwise the files are converted here, one by one.
            Workers are started with "spawn": a script that calls this must do so under
            ``if __name__ == "__main__":``.
        progress: show a progress bar (seconds of audio, with the running real-time factor; with
            workers it advances by whole files).

    Returns:
        A :class:`ConversionReport`; every failure (missing input, unreadable/empty/silent file,
        name collision, conversion error) is listed with its reason, in input order. Nothing is
        written for a failed input. ``real_time_factor`` is the batch's wall time over its audio (with
        workers below the one-core figure); ``stage_seconds`` add up every process's time.

    Raises:
        WorkersDied: a worker process died (not one file's fault; see :class:`~cyclegan_vc.utils.WorkersDied`).
    """
    _direction(direction)
    if f0 is not None:
        FeatureConfig(f0_method=f0)  # raises ValueError for an unknown method before any work
    if jobs is not None and (isinstance(jobs, bool) or int(jobs) != jobs or jobs < 1):
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    converter = load_converter(model, device, energy, smooth, f0_range)
    out = Path(out)
    report = ConversionReport()
    files: list[tuple[Path, Path]] = []
    for item in inputs:
        found, problem = _expand(item, exclude=out.resolve())
        if problem:
            report.failures.append((Path(item), problem))
            log.warning("skipped %s: %s", item, problem)
        files += found
    plan = _plan(files, out)
    seconds = {path: _duration(path) for path, _ in files}
    work = [path for path, _, problem in plan if problem is None]
    if jobs is None:  # all cores, but no more workers than minutes of audio: a worker's start costs seconds
        jobs = max(1, min(os.cpu_count() or 1, int(sum(seconds[p] for p in work) // WORKER_AUDIO_SECONDS)))
    # a file converted in several chunks (longer than 1.5 chunks) can keep several workers busy
    long = {p for p in work if seconds[p] > 1.5 * converter.chunk_seconds}
    units = sum(math.ceil(seconds[p] / converter.chunk_seconds) if p in long else 1 for p in work)
    workers = min(jobs, units)
    use_pool = workers > 1 and not isinstance(model, VoiceConverter) and converter.device.type == "cpu"

    problems: dict[int, str | None] = {}  # input index -> its problem, None when converted; filled as files finish
    timings_before = dict(converter.timings)  # this process's and the workers' seconds per stage add up there
    start = time.perf_counter()
    bar = tqdm(
        total=sum(seconds.values()),
        desc=f"converting {direction}",
        unit="s",
        disable=not progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}{postfix}]",
    )

    def finished(index: int, problem: str | None) -> None:
        problems[index] = problem
        path = plan[index][0]
        if problem is None:
            report.audio_seconds += seconds[path]
        else:
            log.warning("skipped %s: %s", path, problem)
        report.wall_seconds = time.perf_counter() - start
        failed = sum(p is not None for p in problems.values())
        bar.set_postfix_str(
            f"file {len(problems)}/{len(plan)}, real-time factor {report.real_time_factor:.3f}, {failed} failed"
        )

    with logging_redirect_tqdm() if progress else nullcontext(), bar:
        for index, (path, _, problem) in enumerate(plan):
            if problem is not None:
                bar.update(seconds[path])
                finished(index, problem)
        todo = [(i, path, target) for i, (path, target, problem) in enumerate(plan) if problem is None]

        def in_order(files: list[tuple[int, Path, Path]], pool: Executor | None = None) -> None:
            """Files one after another, read, joined and written here (their chunks in ``pool``)."""
            for index, path, target in files:
                end_of_file = bar.n + seconds[path]

                def advance(chunk_seconds: float, limit: float = end_of_file) -> None:
                    bar.update(max(0.0, min(chunk_seconds, limit - bar.n)))

                problem = _convert_one(converter, path, target, direction, f0, keep_rate, advance, pool, workers + 1)
                advance(seconds[path])  # the rest of this file's share, also after a failure
                finished(index, problem)

        if use_pool:
            pool = ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_init_worker,
                initargs=(str(model), converter.energy, converter.smooth, converter.f0_range),
            )
            try:
                in_order([item for item in todo if item[1] in long], pool)  # long files first, chunk by chunk
                futures = {  # then the others, a file per worker
                    pool.submit(_convert_in_worker, path, target, direction, f0, keep_rate): (i, path)
                    for i, path, target in todo
                    if path not in long
                }
                for future in as_completed(futures):
                    index, path = futures[future]
                    problem, timings = future.result()
                    converter._add_timings(timings)
                    bar.update(seconds[path])
                    finished(index, problem)
            except BrokenProcessPool as exc:  # not one file's fault: every pending file would fail alike
                raise WorkersDied("convert()") from exc
            finally:  # also on an interrupt: files not yet started are not started
                pool.shutdown(cancel_futures=True)
        else:
            in_order(todo)
    report.wall_seconds = time.perf_counter() - start
    report.stage_seconds = {k: v - timings_before.get(k, 0.0) for k, v in converter.timings.items()}
    for index, (path, target, _) in enumerate(plan):
        if problems[index] is None:
            report.outputs.append(target)
        else:
            report.failures.append((path, problems[index]))
    log.info(
        "converted %d file(s) (%.1f s of audio, real-time factor %.3f) into %s with %d process(es); %d failure(s)",
        len(report.outputs), report.audio_seconds, report.real_time_factor, out, workers if use_pool else 1,
        len(report.failures),
    )
    return report

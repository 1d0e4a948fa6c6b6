"""The voice converter: waveform -> WORLD features -> generator -> waveform, for one loaded model.

Per direction (``"A2B"``: source speaker A to target B; ``"B2A"`` the reverse):

- F0 by the log-Gaussian normalised transform with the two speakers' stored statistics;
- aperiodicity copied from the input;
- mel-cepstra normalised with the *input* speaker's statistics, passed through the generator,
  de-normalised with the *output* speaker's statistics; the frame count is padded to a multiple of
  4 (the generator downsamples twice) and trimmed back;
- WORLD synthesis, padded or trimmed to the input's length (same duration in and out).

How the output is made beyond the paper (c0 from the source, smoothing, the F0 search range, the F0
estimator) is one :class:`~cyclegan_vc.options.ConversionOptions`, :attr:`VoiceConverter.options`.

Long inputs are converted in chunks (:mod:`~cyclegan_vc.conversion.chunking`); files are streamed
(:class:`~cyclegan_vc.audio.AudioStream`: read in blocks, validated first, resampled in a stream,
written atomically), so memory is bounded by the chunk size, not by the recording's length, and a
failed input never leaves a partial output behind.

Speed: the time goes to WORLD (pyworld), not to the network; see ``benchmarks/convert.py`` and
docs/performance.md. :attr:`VoiceConverter.timings` accumulates the seconds spent in analysis,
network and synthesis.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..audio import AudioError, AudioStream, resample, resample_stream, validate_waveform, write_wav_stream
from ..devices import resolve_device
from ..directions import direction as _direction
from ..features import FeatureConfig, WorldFeatures, analyze, synthesize
from ..options import ConversionOptions
from ..stats import SpeakerStats, convert_f0, denormalize, f0_search_range, normalize
from .chunking import Chunk, Chunker, cross_fade

__all__ = ["FRAME_MULTIPLE", "SegmentMap", "VoiceConverter", "load_converter", "smooth_frames"]

FRAME_MULTIPLE = 4  # the generator downsamples twice by 2

#: How the chunks of one input are converted: ``(chunks, direction, config)`` -> ``(chunk, converted
#: samples[lo:hi])`` in order. The default converts them in this process; worker processes offer another.
SegmentMap = Callable[[Iterable[tuple[Chunk, np.ndarray]], str, FeatureConfig], Iterator[tuple[Chunk, np.ndarray]]]


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
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (:func:`~cyclegan_vc.devices.resolve_device`).
        chunk_seconds: nominal chunk length of long inputs (seconds of audio).
        context_seconds: audio analysed on each side of a chunk and discarded (seconds).
        options: how the output is made (:class:`~cyclegan_vc.options.ConversionOptions`; default: the
            paper's conversion with the model's F0 estimator). ``energy="source"`` takes the output's
            c0 from the input, mean-variance mapped to the output speaker (the generator gives c1 and
            up); ``smooth`` passes of :func:`smooth_frames` go over the generator's output along time
            (a source c0 is not smoothed; docs/results.md); ``f0_range="speaker"`` searches F0 in the
            input speaker's range (:func:`~cyclegan_vc.stats.f0_search_range`); ``f0_method`` replaces
            the model's F0 estimator.
        step: training iterations behind the weights, for reports (:meth:`load` sets it).

    Attributes:
        options: as given; assign another :class:`~cyclegan_vc.options.ConversionOptions` to change them.
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
        options: ConversionOptions | None = None,
        step: int | None = None,
    ):
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError("chunk_seconds must be > 0 and context_seconds >= 0")
        missing = sorted({"G_ab", "G_ba"} - set(generators)) + sorted({"A", "B"} - set(stats))
        if missing:
            raise ValueError(f"VoiceConverter needs generators G_ab, G_ba and stats A, B; missing {missing}")
        self.options = options
        self.device = resolve_device(device)
        self.generators = {name: g.to(self.device).eval() for name, g in generators.items()}
        self.stats = stats
        self.features = features
        self.speakers = speakers or {"A": "A", "B": "B"}
        self.chunk_seconds = float(chunk_seconds)
        self.context_seconds = float(context_seconds)
        self.step = None if step is None else int(step)
        self.timings: dict[str, float] = {}
        self.reset_timings()

    @property
    def options(self) -> ConversionOptions:
        return self._options

    @options.setter
    def options(self, options: ConversionOptions | None) -> None:
        if options is not None and not isinstance(options, ConversionOptions):
            raise TypeError(f"options must be a ConversionOptions, got {type(options).__name__}")
        self._options = options or ConversionOptions()

    # read-only views of the options, for reports
    energy = property(lambda self: self.options.energy, doc="``options.energy``")
    smooth = property(lambda self: self.options.smooth, doc="``options.smooth``")
    f0_range = property(lambda self: self.options.f0_range, doc="``options.f0_range``")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        options: ConversionOptions | None = None,
        **kwargs,
    ) -> "VoiceConverter":
        """Load an exported model (file) or the best model of a run directory.

        ``kwargs`` go to the constructor (``chunk_seconds``, ``context_seconds``).
        """
        from ..checkpoint import load_model

        device = resolve_device(device)
        model = load_model(path, device=device)
        return cls(
            generators=model.generators,
            stats=model.stats,
            features=model.features,
            speakers=model.speakers,
            device=device,
            options=options,
            step=model.step,
            **kwargs,
        )

    @property
    def sample_rate(self) -> int:
        """The model's sample rate (Hz): conversion happens, and output comes, at this rate."""
        return self.features.sample_rate

    def reset_timings(self) -> None:
        self.timings = {"analysis": 0.0, "network": 0.0, "synthesis": 0.0}

    def add_timings(self, timings: dict[str, float]) -> None:
        """Add another process's seconds per stage to :attr:`timings`."""
        for stage, seconds in timings.items():
            self.timings[stage] += seconds

    def analysis_config(self, f0_method: str | None = None) -> FeatureConfig:
        """The model's features with the F0 estimator ``f0_method``, else the options', else the model's."""
        method = f0_method or self.options.f0_method
        return self.features if method in (None, self.features.f0_method) else self.features.replace(f0_method=method)

    def f0_search_range(self, direction: str = "A2B") -> tuple[float, float]:
        """``(floor, ceil)`` Hz that the F0 estimator searches in an input of ``direction``'s source speaker."""
        floor, ceil = self.features.f0_floor, self.features.f0_ceil
        if self.options.f0_range == "speaker":
            return f0_search_range(self.stats[_direction(direction).source], floor, ceil)
        return float(floor), float(ceil)

    # -- features ---------------------------------------------------------------------------
    @torch.inference_mode()
    def convert_mcep(self, mcep: np.ndarray, direction: str = "A2B") -> np.ndarray:
        """``(T, D)`` mel-cepstra of the input speaker -> ``(T, D)`` float64 of the output speaker.

        The frame count is padded to a multiple of 4 by repeating the last frame and trimmed back.
        With ``options.smooth`` the generator's output is smoothed along time (:func:`smooth_frames`);
        with ``options.energy="source"`` the output's c0 is then the input's c0 normalised with the
        input speaker's statistics and de-normalised with the output speaker's.
        """
        d = _direction(direction)
        mcep = np.asarray(mcep, dtype=np.float64)
        if mcep.ndim != 2 or mcep.shape[0] == 0:
            raise ValueError(f"mcep must be (frames, dims) with frames > 0, got shape {mcep.shape}")
        frames = mcep.shape[0]
        norm = normalize(mcep, self.stats[d.source]).astype(np.float32)
        pad = (-frames) % FRAME_MULTIPLE
        if pad:
            norm = np.concatenate([norm, np.repeat(norm[-1:], pad, axis=0)])
        x = torch.from_numpy(np.ascontiguousarray(norm.T))[None].to(self.device)
        y = self.generators[d.generator](x)[0].float().cpu().numpy().T[:frames].astype(np.float64)
        y = smooth_frames(y, self.options.smooth)
        if self.options.energy == "source":
            y[:, 0] = norm[:frames, 0]
        return denormalize(y, self.stats[d.target])

    def convert_features(self, feats: WorldFeatures, direction: str = "A2B") -> WorldFeatures:
        """Convert WORLD features: F0 transform, mel-cepstra through the generator, aperiodicity copied."""
        d = _direction(direction)
        return WorldFeatures(
            f0=convert_f0(feats.f0, self.stats[d.source], self.stats[d.target]),
            mcep=self.convert_mcep(feats.mcep, direction),
            ap=feats.ap,
        )

    # -- waveforms --------------------------------------------------------------------------
    def convert_segment(self, wave: np.ndarray, direction: str, config: FeatureConfig) -> np.ndarray:
        """One piece: ``(samples,)`` at the model's rate -> converted ``(samples,)``, analysed with ``config``."""
        t0 = time.perf_counter()
        f0_range = None if self.options.f0_range == "full" else self.f0_search_range(direction)
        feats = analyze(wave, config, f0_range=f0_range)
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

    def _segments_here(
        self, chunks: Iterable[tuple[Chunk, np.ndarray]], direction: str, config: FeatureConfig
    ) -> Iterator[tuple[Chunk, np.ndarray]]:
        """The default :data:`SegmentMap`: each chunk converted in this process."""
        for chunk, samples in chunks:
            yield chunk, self.convert_segment(samples, direction, config)

    def _iter_converted(
        self,
        blocks: Iterable[np.ndarray],
        direction: str,
        config: FeatureConfig,
        on_chunk: Callable[[int], None] | None = None,
        segments: SegmentMap | None = None,
    ) -> Iterator[np.ndarray]:
        """Convert a waveform arriving in blocks (model rate); yield the output in order, as many
        samples in total as came in. ``on_chunk(samples)`` is called after each chunk; ``segments``
        converts the chunks (default: here, one after another)."""
        chunker = Chunker(blocks, config.sample_rate, self.chunk_seconds, self.context_seconds)
        converted = (segments or self._segments_here)(chunker, direction, config)
        return cross_fade(converted, chunker.fade, on_chunk)

    def convert(
        self,
        waveform: np.ndarray,
        sample_rate: int,
        direction: str = "A2B",
        f0_method: str | None = None,
    ) -> tuple[np.ndarray, int]:
        """Convert a waveform: mono ``(samples,)`` or ``(samples, channels)`` (channels averaged), any rate.

        ``f0_method`` overrides the F0 estimator (``"harvest"`` or ``"dio"``; default: ``options.f0_method``,
        else the model's). Returns ``(waveform, rate)``: float64 ``(samples,)`` at the model's rate
        (:attr:`sample_rate`), the same duration as the input. Raises :class:`~cyclegan_vc.audio.AudioError`
        for an unusable waveform. Long inputs are converted in chunks (WORLD features exist for one
        chunk at a time); the input and output waveforms themselves are whole arrays here,
        :meth:`convert_file` streams.
        """
        _direction(direction)
        config = self.analysis_config(f0_method)
        wave = np.asarray(waveform, dtype=np.float64)
        if wave.ndim == 2 and wave.shape[1] > wave.shape[0]:
            raise AudioError(
                None, f"expected (samples, channels), got shape {wave.shape}: transpose channel-first arrays"
            )
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
        segments: SegmentMap | None = None,
    ) -> Path:
        """Convert one audio file into a 16-bit WAV at the model's rate (``keep_rate``: the input's).

        The file is streamed (memory bounded by the chunk size) and the output written atomically:
        nothing is left at ``out_path`` if anything fails. ``on_chunk(seconds)`` is called after
        each converted chunk with its duration; ``segments`` converts the chunks (default: in this
        process; :func:`~cyclegan_vc.conversion.convert` passes its worker processes'). Returns
        ``out_path``; raises :class:`~cyclegan_vc.audio.AudioError` (naming the file) for unusable input.
        """
        _direction(direction)
        config = self.analysis_config(f0_method)
        path, out_path = Path(path), Path(out_path)
        source = AudioStream(path)
        out_rate = source.rate if keep_rate else self.sample_rate
        callback = None if on_chunk is None else (lambda n: on_chunk(n / self.sample_rate))
        pieces = self._iter_converted(source.blocks(self.sample_rate), direction, config, callback, segments)
        if out_rate != self.sample_rate:
            pieces = resample_stream(pieces, self.sample_rate, out_rate)
        try:
            write_wav_stream(out_path, pieces, out_rate, n_samples=source.frames if keep_rate else None)
        except AudioError as exc:
            raise AudioError(path, exc.problem) from None
        return out_path


def load_converter(
    model: str | os.PathLike | VoiceConverter, device: str = "auto", options: ConversionOptions | None = None
) -> VoiceConverter:
    """``model`` itself when it is a loaded :class:`VoiceConverter` (its :attr:`~VoiceConverter.options`
    replaced by ``options`` when given), else the model loaded from a run directory or file onto
    ``device`` with ``options`` (default: the paper's conversion)."""
    if not isinstance(model, VoiceConverter):
        return VoiceConverter.load(model, device=device, options=options)
    if options is not None:
        model.options = options
    return model

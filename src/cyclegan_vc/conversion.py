"""Conversion of new recordings with a trained model: waveform -> WORLD -> generator -> waveform.

Per direction (``"A2B"``: source speaker A to target B; ``"B2A"`` the reverse):

- F0 by the log-Gaussian normalised transform with the two speakers' stored statistics;
- aperiodicity copied from the input;
- mel-cepstra normalised with the *input* speaker's statistics, passed through the generator,
  de-normalised with the *output* speaker's statistics; the frame count is padded to a multiple of
  4 (the generator downsamples twice) and trimmed back;
- WORLD synthesis, trimmed to the input's length.

Inputs longer than ``chunk_seconds`` are converted in chunks with ``context_seconds`` of audio on
each side; chunks are joined at the quietest 10 ms near each nominal boundary with a short
cross-fade, so memory stays bounded by the chunk size whatever the input's length.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from .audio import AUDIO_EXTENSIONS, AudioError, load_audio, resample, save_audio, validate_waveform
from .features import FeatureConfig, WorldFeatures, analyze, synthesize
from .stats import SpeakerStats, convert_f0, denormalize, normalize

__all__ = ["ConversionReport", "VoiceConverter", "convert", "expand_inputs"]

log = logging.getLogger(__name__)

DIRECTIONS = {"A2B": ("A", "B", "G_ab"), "B2A": ("B", "A", "G_ba")}
FRAME_MULTIPLE = 4


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when available, else CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class VoiceConverter:
    """Both generators of a trained model with the speakers' statistics and feature settings.

    >>> vc = VoiceConverter.load("runs/demo")                  # run directory or exported model file
    >>> wave, rate = vc.convert(wave, 44100, direction="A2B")  # any rate in, the model's rate out
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
    ):
        self.device = resolve_device(device)
        self.generators = {name: g.to(self.device).eval() for name, g in generators.items()}
        self.stats = stats
        self.features = features
        self.speakers = speakers or {"A": "A", "B": "B"}
        self.chunk_seconds = chunk_seconds
        self.context_seconds = context_seconds

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "auto", **kwargs) -> "VoiceConverter":
        """Load an exported model (file) or the best model of a run directory."""
        from .checkpoint import load_model

        model = load_model(path, device=resolve_device(device))
        return cls(
            generators=model.generators,
            stats=model.stats,
            features=model.features,
            speakers=model.speakers,
            device=device,
            **kwargs,
        )

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    # -- features ---------------------------------------------------------------------------
    @torch.inference_mode()
    def convert_mcep(self, mcep: np.ndarray, direction: str = "A2B") -> np.ndarray:
        """``(T, D)`` mel-cepstra of the input speaker -> ``(T, D)`` of the output speaker."""
        src, tgt, gen = _direction(direction)
        frames = mcep.shape[0]
        norm = normalize(mcep, self.stats[src]).astype(np.float32)
        pad = (-frames) % FRAME_MULTIPLE
        if pad:
            norm = np.concatenate([norm, np.repeat(norm[-1:], pad, axis=0)])
        x = torch.from_numpy(np.ascontiguousarray(norm.T))[None].to(self.device)
        y = self.generators[gen](x)[0].float().cpu().numpy().T[:frames]
        return denormalize(y.astype(np.float64), self.stats[tgt])

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
        out = synthesize(self.convert_features(analyze(wave, config), direction), config)
        if len(out) < len(wave):
            out = np.pad(out, (0, len(wave) - len(out)))
        return out[: len(wave)]

    def convert(
        self,
        waveform: np.ndarray,
        sample_rate: int,
        direction: str = "A2B",
        f0_method: str | None = None,
    ) -> tuple[np.ndarray, int]:
        """Convert a waveform (mono ``(samples,)`` or ``(samples, channels)``, any rate).

        Returns ``(waveform, rate)`` at the model's sample rate, the same duration as the input.
        """
        _direction(direction)
        wave = np.asarray(waveform, dtype=np.float64)
        if wave.ndim == 2:
            wave = wave.mean(axis=1)
        wave = resample(wave, int(sample_rate), self.sample_rate)
        validate_waveform(wave, self.sample_rate)
        config = self.features if f0_method is None else self.features.replace(f0_method=f0_method)
        return self._convert_chunked(wave, direction, config), self.sample_rate

    def _convert_chunked(self, wave: np.ndarray, direction: str, config: FeatureConfig) -> np.ndarray:
        rate = config.sample_rate
        chunk = int(self.chunk_seconds * rate)
        if len(wave) <= chunk * 1.5:
            return self._convert_segment(wave, direction, config)
        context = int(self.context_seconds * rate)
        fade = int(0.01 * rate)  # 10 ms cross-fade
        bounds = [0] + _quiet_boundaries(wave, chunk, rate) + [len(wave)]
        out = np.zeros(len(wave))
        ramp = np.linspace(0.0, 1.0, 2 * fade + 2)[1:-1]
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            lo = max(0, start - fade - context)
            hi = min(len(wave), end + fade + context)
            seg = self._convert_segment(wave[lo:hi], direction, config)
            a, b = max(0, start - fade), min(len(wave), end + fade)
            piece = seg[a - lo : b - lo].copy()
            if i > 0:  # fade in over [start - fade, start + fade)
                piece[: 2 * fade] *= ramp
            if end < len(wave):  # fade out over [end - fade, end + fade)
                piece[-2 * fade :] *= ramp[::-1]
            out[a:b] += piece
        return out

    def convert_file(
        self,
        path: str | os.PathLike,
        out_path: str | os.PathLike,
        direction: str = "A2B",
        f0_method: str | None = None,
        keep_rate: bool = False,
    ) -> Path:
        """Convert one audio file and write a 16-bit WAV (atomically). Returns the output path."""
        wave, rate = load_audio(path, sample_rate=None)
        try:
            converted, out_rate = self.convert(wave, rate, direction, f0_method)
        except AudioError as exc:
            raise AudioError(path, exc.problem) from None
        if keep_rate and rate != out_rate:
            converted, out_rate = resample(converted, out_rate, rate), rate
        return save_audio(out_path, converted, out_rate)


def _direction(direction: str) -> tuple[str, str, str]:
    try:
        return DIRECTIONS[direction]
    except KeyError:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}") from None


def _quiet_boundaries(wave: np.ndarray, chunk: int, rate: int) -> list[int]:
    """Chunk boundaries near multiples of ``chunk`` samples, each moved to the quietest 10 ms
    within a quarter chunk (at most 1 s) of its nominal position."""
    win = int(0.01 * rate)
    reach = min(chunk // 4, rate)
    bounds = []
    for nominal in range(chunk, len(wave) - chunk // 2, chunk):
        lo, hi = max(win, nominal - reach), min(len(wave) - win, nominal + reach)
        frames = wave[lo:hi][: (hi - lo) // win * win].reshape(-1, win)
        bounds.append(lo + int(np.argmin(np.square(frames).sum(axis=1))) * win + win // 2)
    return bounds


# -- batch conversion of files -----------------------------------------------------------------
@dataclass
class ConversionReport:
    """What a batch conversion produced: written files, failures, audio and wall seconds."""

    outputs: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Files, folders (recursive) or glob patterns -> ``(file, name relative to its root)`` pairs."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            found += [(p, p.relative_to(path)) for p in files]
        elif path.exists():
            found.append((path, Path(path.name)))
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                found.append((path, Path(path.name)))  # reported as missing by the converter
            found += [(Path(m), Path(Path(m).name)) for m in matches if Path(m).is_file()]
    return found


def convert(
    model: str | os.PathLike | VoiceConverter,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    direction: str = "A2B",
    f0: str | None = None,
    device: str = "auto",
    keep_rate: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert every input file into ``out`` as ``<name>.wav``; bad inputs are reported and skipped.

    The report lists each failure (file, reason); a summary is logged at the end.
    """
    _direction(direction)
    converter = model if isinstance(model, VoiceConverter) else VoiceConverter.load(model, device=device)
    out = Path(out)
    report = ConversionReport()
    files = expand_inputs(inputs)
    start = time.perf_counter()
    bar = tqdm(files, desc=f"converting {direction}", unit="file", disable=not progress)
    for path, rel in bar:
        target = out / rel.with_suffix(".wav")
        try:
            converter.convert_file(path, target, direction, f0_method=f0, keep_rate=keep_rate)
        except AudioError as exc:
            report.failures.append((path, exc.problem))
            log.warning("skipped %s", exc)
            continue
        except Exception as exc:  # one bad file must not end the batch
            report.failures.append((path, f"conversion failed: {exc}"))
            log.warning("skipped %s: conversion failed: %s", path, exc)
            continue
        report.outputs.append(target)
        report.audio_seconds += sf.info(str(target)).duration
        report.wall_seconds = time.perf_counter() - start
        bar.set_postfix(rtf=f"{report.real_time_factor:.3f}")
    report.wall_seconds = time.perf_counter() - start
    log.info(
        "converted %d file(s) (%.1f s of audio, real-time factor %.3f) into %s; %d failure(s)",
        len(report.outputs), report.audio_seconds, report.real_time_factor, out, len(report.failures),
    )
    for path, reason in report.failures:
        log.error("failed: %s: %s", path, reason)
    return report

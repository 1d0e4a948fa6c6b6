"""The WORLD boundary: analysis and synthesis of F0, mel-cepstra and aperiodicity.

pyworld is called only here. Analysis returns a :class:`WorldFeatures` record; synthesis takes one.
Frames are ``frame_period`` ms apart (5 ms by default), so a 1-second clip at 16 kHz has 201 frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyworld

__all__ = [
    "F0_METHODS",
    "FeatureConfig",
    "SpectralEnvelope",
    "WorldFeatures",
    "analyze",
    "analyze_envelope",
    "decode_aperiodicity",
    "decode_envelope",
    "encode_aperiodicity",
    "encode_envelope",
    "estimate_f0",
    "synthesize",
]

F0_METHODS = ("harvest", "dio")


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of the WORLD analysis; part of every cache key and of every exported model."""

    sample_rate: int = 16000  # Hz; audio is resampled to this rate before analysis
    frame_period: float = 5.0  # ms between frames
    mcep_dim: int = 24  # coded spectral envelope (mel-cepstrum) dimension, as in the paper
    f0_method: str = "harvest"  # "harvest" (robust) or "dio" (dio + stonemask, faster)
    f0_floor: float = 71.0  # Hz
    f0_ceil: float = 800.0  # Hz

    def __post_init__(self) -> None:
        if self.f0_method not in F0_METHODS:
            raise ValueError(f"f0_method must be one of {F0_METHODS}, got {self.f0_method!r}")
        if self.sample_rate <= 0 or self.frame_period <= 0 or self.mcep_dim <= 0:
            raise ValueError("sample_rate, frame_period and mcep_dim must be positive")
        if not 0 < self.f0_floor < self.f0_ceil:
            raise ValueError("need 0 < f0_floor < f0_ceil")

    @property
    def fft_size(self) -> int:
        """FFT size CheapTrick uses for this rate and F0 floor (1024 at 16 kHz)."""
        return int(pyworld.get_cheaptrick_fft_size(self.sample_rate, self.f0_floor))

    def replace(self, **changes) -> "FeatureConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureConfig":
        return cls(**data)


@dataclass
class WorldFeatures:
    """WORLD parameters of one utterance.

    Attributes:
        f0: ``(T,)`` float64, Hz; 0 on unvoiced frames.
        mcep: ``(T, D)`` float64 coded spectral envelope (mel-cepstrum, WORLD's CodeSpectralEnvelope).
        ap: ``(T, fft_size // 2 + 1)`` float64 aperiodicity in [0, 1].
    """

    f0: np.ndarray
    mcep: np.ndarray
    ap: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.f0.shape[0])

    @property
    def voiced(self) -> np.ndarray:
        return self.f0 > 0


def estimate_f0(
    wave: np.ndarray, config: FeatureConfig, f0_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """F0 contour and its time axis (seconds) by harvest or dio + stonemask.

    ``f0_range``: ``(floor, ceil)`` Hz searched instead of ``config.f0_floor`` / ``f0_ceil`` (e.g. a
    speaker's own range, :func:`cyclegan_vc.stats.f0_search_range`); CheapTrick keeps the config's floor.
    """
    x = np.ascontiguousarray(wave, dtype=np.float64)
    floor, ceil = (config.f0_floor, config.f0_ceil) if f0_range is None else map(float, f0_range)
    if not 0 < floor < ceil:
        raise ValueError(f"need 0 < F0 floor < F0 ceiling, got {floor!r}, {ceil!r}")
    kwargs = dict(f0_floor=floor, f0_ceil=ceil, frame_period=config.frame_period)
    if config.f0_method == "harvest":
        f0, t = pyworld.harvest(x, config.sample_rate, **kwargs)
    else:
        f0, t = pyworld.dio(x, config.sample_rate, **kwargs)
        f0 = pyworld.stonemask(x, f0, t, config.sample_rate)
    return f0, t


def encode_envelope(sp: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``(T, fft/2+1)`` power spectral envelope -> ``(T, mcep_dim)`` mel-cepstrum."""
    return pyworld.code_spectral_envelope(np.ascontiguousarray(sp), config.sample_rate, config.mcep_dim)


def decode_envelope(mcep: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``(T, mcep_dim)`` mel-cepstrum -> ``(T, fft/2+1)`` power spectral envelope."""
    return pyworld.decode_spectral_envelope(
        np.ascontiguousarray(mcep, dtype=np.float64), config.sample_rate, config.fft_size
    )


def encode_aperiodicity(ap: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``(T, fft/2+1)`` aperiodicity -> ``(T, bands)`` band aperiodicity (compact cache form)."""
    return pyworld.code_aperiodicity(np.ascontiguousarray(ap), config.sample_rate)


def decode_aperiodicity(coded: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``(T, bands)`` band aperiodicity -> ``(T, fft/2+1)`` aperiodicity."""
    return pyworld.decode_aperiodicity(
        np.ascontiguousarray(coded, dtype=np.float64), config.sample_rate, config.fft_size
    )


def analyze(
    wave: np.ndarray,
    config: FeatureConfig = FeatureConfig(),
    envelope: "SpectralEnvelope | None" = None,
    f0_range: tuple[float, float] | None = None,
) -> WorldFeatures:
    """WORLD analysis of a mono waveform at ``config.sample_rate``.

    Returns F0 (harvest or dio+stonemask), the CheapTrick envelope coded to ``mcep_dim``
    mel-cepstral coefficients, and D4C aperiodicity, one row per ``frame_period`` ms.
    ``envelope``: :func:`analyze_envelope` of this same waveform and config, whose F0 and envelope are
    then reused (the result is identical; only D4C and the coding are computed).
    ``f0_range``: the F0 search range instead of the config's (see :func:`estimate_f0`).
    """
    x = np.ascontiguousarray(wave, dtype=np.float64)
    if envelope is None:
        envelope = analyze_envelope(x, config, f0_range)
    f0, sp, t = envelope.f0, envelope.sp, envelope.t
    ap = pyworld.d4c(x, f0, t, config.sample_rate, fft_size=config.fft_size)
    return WorldFeatures(f0=f0, mcep=encode_envelope(sp, config), ap=ap)


@dataclass
class SpectralEnvelope:
    """F0 and the raw (uncoded) CheapTrick envelope of one utterance, as objective evaluation needs.

    Attributes:
        f0: ``(T,)`` float64, Hz; 0 on unvoiced frames.
        sp: ``(T, fft_size // 2 + 1)`` float64 power spectral envelope.
        t: ``(T,)`` float64 frame times (s), as the F0 estimator returned them.
    """

    f0: np.ndarray
    sp: np.ndarray
    t: np.ndarray


def analyze_envelope(
    wave: np.ndarray, config: FeatureConfig = FeatureConfig(), f0_range: tuple[float, float] | None = None
) -> SpectralEnvelope:
    """F0 and CheapTrick envelope of a mono waveform at ``config.sample_rate``, without coding it
    to ``mcep_dim`` coefficients and without aperiodicity (the same F0 and envelope as :func:`analyze`)."""
    x = np.ascontiguousarray(wave, dtype=np.float64)
    f0, t = estimate_f0(x, config, f0_range)
    sp = pyworld.cheaptrick(x, f0, t, config.sample_rate, f0_floor=config.f0_floor, fft_size=config.fft_size)
    return SpectralEnvelope(f0=f0, sp=sp, t=t)


def synthesize(features: WorldFeatures, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """WORLD synthesis: ``(T,)`` F0, ``(T, D)`` mel-cepstrum and aperiodicity -> waveform ``(samples,)``."""
    f0 = np.ascontiguousarray(features.f0, dtype=np.float64)
    sp = decode_envelope(features.mcep, config)
    ap = np.ascontiguousarray(features.ap, dtype=np.float64)
    if not (f0.shape[0] == sp.shape[0] == ap.shape[0]):
        raise ValueError(f"frame counts differ: f0 {f0.shape[0]}, mcep {sp.shape[0]}, ap {ap.shape[0]}")
    return pyworld.synthesize(f0, sp, ap, config.sample_rate, config.frame_period)

"""Per-speaker statistics, MCEP normalisation and the log-Gaussian F0 transform.

Statistics come from a speaker's *training* utterances only. Log-F0 statistics use voiced frames
only (F0 > 0), so ``log(0)`` is never taken. Standard deviations are floored at :data:`STD_FLOOR`
so that a constant dimension cannot divide by zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

__all__ = [
    "F0_RANGE_WIDTH",
    "STD_FLOOR",
    "SpeakerStats",
    "StatsAccumulator",
    "compute_stats",
    "convert_f0",
    "denormalize",
    "f0_search_range",
    "normalize",
]

STD_FLOOR = 1e-8
F0_RANGE_WIDTH = 3.0  # standard deviations of log-F0 on each side of the mean, for f0_search_range


@dataclass
class SpeakerStats:
    """Mean and standard deviation of each MCEP dimension and of log-F0 (voiced frames)."""

    mcep_mean: np.ndarray  # (D,)
    mcep_std: np.ndarray  # (D,)
    logf0_mean: float
    logf0_std: float
    n_frames: int = 0
    n_voiced: int = 0

    def to_dict(self) -> dict:
        return {
            "mcep_mean": [float(v) for v in self.mcep_mean],
            "mcep_std": [float(v) for v in self.mcep_std],
            "logf0_mean": float(self.logf0_mean),
            "logf0_std": float(self.logf0_std),
            "n_frames": int(self.n_frames),
            "n_voiced": int(self.n_voiced),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SpeakerStats":
        return cls(
            mcep_mean=np.asarray(data["mcep_mean"], dtype=np.float64),
            mcep_std=np.asarray(data["mcep_std"], dtype=np.float64),
            logf0_mean=float(data["logf0_mean"]),
            logf0_std=float(data["logf0_std"]),
            n_frames=int(data.get("n_frames", 0)),
            n_voiced=int(data.get("n_voiced", 0)),
        )


class StatsAccumulator:
    """Incremental sums (in float64) over utterances; :meth:`result` gives :class:`SpeakerStats`."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = None
        self.sumsq = None
        self.n_voiced = 0
        self.lf0_sum = 0.0
        self.lf0_sumsq = 0.0

    def add(self, f0: np.ndarray, mcep: np.ndarray) -> None:
        mcep = np.asarray(mcep, dtype=np.float64)
        if self.sum is None:
            self.sum = np.zeros(mcep.shape[1])
            self.sumsq = np.zeros(mcep.shape[1])
        self.n += mcep.shape[0]
        self.sum += mcep.sum(axis=0)
        self.sumsq += np.square(mcep).sum(axis=0)
        f0 = np.asarray(f0, dtype=np.float64)
        lf0 = np.log(f0[f0 > 0])
        self.n_voiced += lf0.size
        self.lf0_sum += float(lf0.sum())
        self.lf0_sumsq += float(np.square(lf0).sum())

    def result(self) -> SpeakerStats:
        if self.n == 0:
            raise ValueError("no frames to compute statistics from")
        if self.n_voiced == 0:
            raise ValueError("no voiced frames: cannot compute log-F0 statistics")
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean**2, 0.0)
        lf0_mean = self.lf0_sum / self.n_voiced
        lf0_var = max(self.lf0_sumsq / self.n_voiced - lf0_mean**2, 0.0)
        return SpeakerStats(
            mcep_mean=mean,
            mcep_std=np.maximum(np.sqrt(var), STD_FLOOR),
            logf0_mean=float(lf0_mean),
            logf0_std=float(max(np.sqrt(lf0_var), STD_FLOOR)),
            n_frames=self.n,
            n_voiced=self.n_voiced,
        )


def compute_stats(utterances: Iterable[tuple[np.ndarray, np.ndarray]]) -> SpeakerStats:
    """Statistics over ``(f0 (T,), mcep (T, D))`` pairs of one speaker's training utterances."""
    acc = StatsAccumulator()
    for f0, mcep in utterances:
        acc.add(f0, mcep)
    return acc.result()


def normalize(mcep: np.ndarray, stats: SpeakerStats) -> np.ndarray:
    """``(T, D)`` MCEPs -> zero-mean unit-variance per dimension."""
    return (mcep - stats.mcep_mean) / stats.mcep_std


def denormalize(mcep: np.ndarray, stats: SpeakerStats) -> np.ndarray:
    """Inverse of :func:`normalize`."""
    return mcep * stats.mcep_std + stats.mcep_mean


def convert_f0(f0: np.ndarray, source: SpeakerStats, target: SpeakerStats) -> np.ndarray:
    """Log-Gaussian normalised transform of voiced frames; unvoiced frames (0 Hz) stay 0.

    ``exp((log f0 - mu_src) / sigma_src * sigma_tgt + mu_tgt)``.
    """
    f0 = np.asarray(f0, dtype=np.float64)
    out = np.zeros_like(f0)
    voiced = f0 > 0
    out[voiced] = np.exp(
        (np.log(f0[voiced]) - source.logf0_mean) / source.logf0_std * target.logf0_std + target.logf0_mean
    )
    return out


def f0_search_range(
    stats: SpeakerStats, floor: float, ceil: float, width: float = F0_RANGE_WIDTH
) -> tuple[float, float]:
    """The speaker's F0 search range ``exp(mu -/+ width * sigma)`` (log-F0 statistics), within ``[floor, ceil]``.

    For an F0 estimator that searches only where this speaker's voice is: harvest's cost grows with
    the octaves it searches, and a range fitted to the speaker also rules out octave errors outside
    it. Returns ``(floor, ceil)`` unchanged when the statistics have no spread (no voiced frames) or
    the range would not leave a ratio of at least 1.5 between its ends.
    """
    if not 0 < floor < ceil:
        raise ValueError("need 0 < floor < ceil")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    if stats.n_voiced == 0 or not np.isfinite(stats.logf0_mean) or stats.logf0_std <= STD_FLOOR:
        return float(floor), float(ceil)
    lo = max(float(floor), float(np.exp(stats.logf0_mean - width * stats.logf0_std)))
    hi = min(float(ceil), float(np.exp(stats.logf0_mean + width * stats.logf0_std)))
    if hi < 1.5 * lo:
        return float(floor), float(ceil)
    return lo, hi

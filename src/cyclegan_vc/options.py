"""Conversion options: the one typed record of how a model's output is made (no torch import here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["ENERGY_MODES", "F0_METHODS", "F0_RANGES", "ConversionOptions"]

ENERGY_MODES = ("generator", "source")
"""Sources of the output's c0 (frame energy). ``"generator"`` is the paper's conversion. ``"source"``
keeps the input's energy contour (mean-variance mapped): c0 carries loudness, not speaker identity,
MCD excludes it, and a briefly trained generator's c0 jitters from frame to frame (docs/results.md),
which DNSMOS hears as roughness."""

#: Where the F0 estimator searches in the input: ``"full"`` (the model's ``f0_floor``-``f0_ceil``, as
#: in preparation) or ``"speaker"`` (the input speaker's ``exp(mu -/+ 3 sigma)`` of log-F0, from its
#: statistics; a named deviation for speed, measured in docs/performance.md).
F0_RANGES = ("full", "speaker")

#: WORLD's F0 estimators
F0_METHODS = ("harvest", "dio")


@dataclass(frozen=True)
class ConversionOptions:
    """How converted speech is made from a trained model, the same in ``convert``, ``evaluate``,
    ``demo``, ``recipe``, validation and worker processes.

    Attributes:
        energy: the output's c0 (frame energy): ``"generator"`` (the paper) or ``"source"`` (the
            input's c0, mean-variance mapped to the output speaker; the generator gives c1 and up).
        smooth: passes of the binomial ``[1, 2, 1] / 4`` filter over the generator's output along time
            (0: none, the paper). A named deviation: it removes the period-2 frame pattern that the
            pixel shuffles leave (docs/results.md).
        f0_range: where the F0 estimator searches in the input (:data:`F0_RANGES`).
        f0_method: the F0 estimator (:data:`F0_METHODS`); ``None`` uses the model's.
    """

    energy: str = "generator"
    smooth: int = 0
    f0_range: str = "full"
    f0_method: str | None = None

    def __post_init__(self) -> None:
        if self.energy not in ENERGY_MODES:
            raise ValueError(f"energy must be one of {ENERGY_MODES}, got {self.energy!r}")
        smooth = self.smooth
        if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or int(smooth) != smooth or smooth < 0:
            raise ValueError(f"smooth must be a whole number of passes >= 0, got {smooth!r}")
        object.__setattr__(self, "smooth", int(smooth))
        if self.f0_range not in F0_RANGES:
            raise ValueError(f"f0_range must be one of {F0_RANGES}, got {self.f0_range!r}")
        if self.f0_method is not None and self.f0_method not in F0_METHODS:
            raise ValueError(f"f0 method must be one of {F0_METHODS}, got {self.f0_method!r}")

    def replace(self, **changes) -> "ConversionOptions":
        """A copy with ``changes`` (validated again); ``None`` values leave a field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One sentence for reports: what differs from the paper's conversion."""
        parts = ["c0 (frame energy) from the generator, as in the paper." if self.energy == "generator" else
                 "c0 (frame energy) from the source, mean-variance mapped (energy=source), c1 and up from the generator."]
        if self.smooth:
            parts.append(f"Generator output smoothed along time by {self.smooth} pass(es) of [1, 2, 1]/4 (smooth={self.smooth}).")
        if self.f0_range == "speaker":
            parts.append("F0 of the converted input searched in the source speaker's range of log-F0 (f0_range=speaker).")
        if self.f0_method:
            parts.append(f"F0 estimated with {self.f0_method}.")
        return " ".join(parts)

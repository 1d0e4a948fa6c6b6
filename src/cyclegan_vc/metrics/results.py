"""The results data model of an evaluation: per direction, per system, per utterance, and their summaries.

The results of a run are an :class:`EvaluationResults`: per direction (``"A2B"``, ``"B2A"``), per
system (``"cyclegan"``, ``"no_conversion"``, ``"mean_variance"``, ``"world_resynthesis"``, or any
other name), a list of :class:`UtteranceMetrics` rows. Summaries (means) are computed from the rows,
never stored separately, so they cannot disagree with them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..directions import DIRECTIONS
from .baselines import SYSTEMS

__all__ = ["ALL_METRICS", "METRICS", "DirectionResults", "EvaluationResults", "MetricInfo", "UtteranceMetrics", "json_ready"]


@dataclass(frozen=True)
class MetricInfo:
    """How a per-utterance metric is named, shown and read."""

    key: str
    label: str
    unit: str
    lower_is_better: bool
    digits: int


#: The metrics every report shows, in display order.
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("mcd_db", "MCD", "dB", True, 2),
    MetricInfo("f0_rmse_cents", "F0 RMSE", "cents", True, 1),
    MetricInfo("vuv_error", "V/UV error", "%", True, 1),
    MetricInfo("sim_to_target", "Sim. to target", "cos", False, 3),
    MetricInfo("sim_to_source", "Sim. to source", "cos", True, 3),
    MetricInfo("dnsmos_ovrl", "DNSMOS OVRL", "MOS", False, 2),
)


#: Summarised keys: the displayed metrics plus the other DNSMOS scores.
ALL_METRICS: tuple[MetricInfo, ...] = METRICS + (
    MetricInfo("dnsmos_sig", "DNSMOS SIG", "MOS", False, 2),
    MetricInfo("dnsmos_bak", "DNSMOS BAK", "MOS", False, 2),
    MetricInfo("dnsmos_p808", "DNSMOS P.808", "MOS", False, 2),
)


@dataclass
class UtteranceMetrics:
    """Objective scores of one test utterance against the real target utterance of the same sentence.

    ``mcd_db`` in dB, ``f0_rmse_cents`` in cents, ``vuv_error`` a fraction in [0, 1], similarities are
    cosines, DNSMOS scores MOS (1-5). NaN where a metric was not computed or is undefined.
    """

    id: str
    mcd_db: float
    f0_rmse_cents: float
    vuv_error: float
    sim_to_target: float
    sim_to_source: float
    dnsmos_ovrl: float
    dnsmos_sig: float = float("nan")
    dnsmos_bak: float = float("nan")
    dnsmos_p808: float = float("nan")
    ref_frames: int = 0
    test_frames: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "UtteranceMetrics":
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown utterance metric field(s): {sorted(unknown)}")
        values = {}
        for name, value in data.items():
            if name == "id":
                values[name] = str(value)
            elif name in ("ref_frames", "test_frames"):
                values[name] = int(value)
            else:
                values[name] = float("nan") if value is None else float(value)
        return cls(**values)



def _finite_stats(values: Sequence[float]) -> dict[str, float | int]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


@dataclass
class DirectionResults:
    """Per-utterance metrics of every system in one conversion direction.

    Attributes:
        source: source speaker name (e.g. ``"SF1"``).
        target: target speaker name (e.g. ``"TF2"``).
        systems: system name -> utterance rows (same sentences for every system, ideally).
    """

    source: str
    target: str
    systems: dict[str, list[UtteranceMetrics]] = field(default_factory=dict)

    def system_names(self) -> list[str]:
        """Systems in display order: :data:`SYSTEMS` first, then the others as inserted."""
        known = [s for s in SYSTEMS if s in self.systems]
        return known + [s for s in self.systems if s not in SYSTEMS]

    def summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """``system -> metric key -> {"mean", "std", "n"}`` over finite values (NaN rows skipped)."""
        return {
            name: {m.key: _finite_stats([getattr(r, m.key) for r in self.systems[name]]) for m in ALL_METRICS}
            for name in self.system_names()
        }

    def means(self) -> dict[str, dict[str, float]]:
        """``system -> metric key -> mean``."""
        return {s: {k: v["mean"] for k, v in per.items()} for s, per in self.summary().items()}


@dataclass
class EvaluationResults:
    """All results of one evaluation run: ``directions["A2B"].systems["cyclegan"]`` -> utterance rows.

    ``meta`` is free-form JSON-ready information (model path, iteration, data paths, ...).
    """

    directions: dict[str, DirectionResults] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def direction_names(self) -> list[str]:
        known = [d for d in DIRECTIONS if d in self.directions]
        return known + [d for d in self.directions if d not in DIRECTIONS]

    def means(self) -> dict[str, dict[str, dict[str, float]]]:
        """``direction -> system -> metric key -> mean``."""
        return {d: self.directions[d].means() for d in self.direction_names()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as None) with summaries and utterance rows."""
        out: dict[str, Any] = {"meta": json_ready(self.meta), "directions": {}}
        for name in self.direction_names():
            d = self.directions[name]
            summary = d.summary()
            out["directions"][name] = {
                "source": d.source,
                "target": d.target,
                "systems": {
                    s: {"summary": json_ready(summary[s]), "utterances": [r.to_dict() for r in d.systems[s]]}
                    for s in d.system_names()
                },
            }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationResults":
        """Inverse of :meth:`to_dict`; also reads a ``metrics.json`` (summaries are recomputed)."""
        if "directions" not in data:
            raise ValueError("results need a 'directions' mapping")
        directions = {}
        for name, d in data["directions"].items():
            try:
                systems = {
                    s: [UtteranceMetrics.from_dict(r) for r in block["utterances"]] for s, block in d["systems"].items()
                }
                directions[name] = DirectionResults(source=str(d["source"]), target=str(d["target"]), systems=systems)
            except (KeyError, TypeError) as exc:
                raise ValueError(f"direction {name!r}: malformed results ({exc!r})") from exc
        return cls(directions=directions, meta=dict(data.get("meta", {})))



def json_ready(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars/arrays by Python values, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj

"""Model cards: what the page shows about a model, read from its file's header and its run folder.

Nothing here loads a network: the speakers, the step, the generator and its arguments, the feature
settings and the training config come from the checkpoint's JSON metadata
(:func:`~cyclegan_vc.checkpoint.read_metadata`), the parameter count from the tensors' shapes in the
safetensors header. From the run folder, when the model has one: the training wall time (from the
TensorBoard event files, see :func:`training_seconds`), and the summaries of every evaluation of the
model (``metrics.json`` files, :func:`evaluation_summary`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ..checkpoint import read_metadata
from ..config import PRESETS, ConfigError, load_config

__all__ = ["evaluation_summary", "metric_columns", "model_card", "preset_of", "training_seconds"]

log = logging.getLogger(__name__)

#: ``events.out.tfevents.<unix seconds>.<host>...``: TensorBoard's event file names start with the time
#: the writer opened them.
_EVENTS = re.compile(r"^events\.out\.tfevents\.(\d+(?:\.\d+)?)\.")


def _plain(node: Any) -> Any:
    """The checkpoint's JSON structure without its tensor references (``{"__tensor__": ...}`` -> None)."""
    if isinstance(node, dict):
        if set(node) == {"__tensor__"}:
            return None
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _parameters(path: Path) -> int:
    """Parameters of one generator (``G_ab``), counted from the shapes in the safetensors header."""
    total = 0
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for name in handle.keys():
            if name.startswith("generators/G_ab/"):
                total += math.prod(handle.get_slice(name).get_shape())
    return total


_PRESET_CONFIGS: dict[str, dict] = {}


def preset_of(config: dict[str, Any]) -> str:
    """The shipped preset whose networks (``model`` section) ``config`` has: ``"small"``; with
    ``" (training settings changed)"`` when its ``training`` section differs beyond the iteration count;
    ``"custom"`` when no preset has these networks."""
    if not _PRESET_CONFIGS:
        for name in PRESETS:
            try:
                _PRESET_CONFIGS[name] = load_config(name).to_dict()
            except ConfigError:  # a preset that does not load is simply not matched
                log.debug("preset %s does not load", name, exc_info=True)
    ignore = {"iterations"}
    training = {k: v for k, v in (config.get("training") or {}).items() if k not in ignore}
    for name, preset in _PRESET_CONFIGS.items():
        if preset["model"] == config.get("model"):
            same = training == {k: v for k, v in preset["training"].items() if k not in ignore}
            return name if same else f"{name} (training settings changed)"
    return "custom"


def training_seconds(run: Path) -> float | None:
    """Wall seconds of training, from ``RUN/tensorboard``: per event file, its last write (mtime) less the
    time in its name (when the writer opened it), summed over the sessions of a resumed run. ``None``
    without event files. Copying a run without keeping modification times makes this wrong."""
    total, found = 0.0, False
    for events in (run / "tensorboard").rglob("events.out.tfevents.*"):
        match = _EVENTS.match(events.name)
        if match and events.is_file():
            total += max(0.0, events.stat().st_mtime - float(match.group(1)))
            found = True
    return total if found else None


def metric_columns() -> list[dict[str, Any]]:
    """The metrics of an evaluation table, in the reports' order: key, label, unit, direction, digits."""
    from ..metrics import METRICS

    return [
        {"key": m.key, "label": m.label, "unit": m.unit, "lower_is_better": m.lower_is_better, "digits": m.digits}
        for m in METRICS
    ]


def evaluation_summary(metrics_json: Path) -> dict[str, Any] | None:
    """Per direction, the mean of every metric per system, from an evaluation's ``metrics.json``, with
    the conversion options and model step it was made with; ``None`` for an unreadable file."""
    try:
        data = json.loads(metrics_json.read_text(encoding="utf-8"))
        meta = data.get("meta") or {}
        directions = []
        for name, d in data["directions"].items():
            rows = []
            for system, block in d["systems"].items():
                summary = block.get("summary") or {}
                means = {key: (stats or {}).get("mean") for key, stats in summary.items()}
                counts = [(stats or {}).get("n") or 0 for stats in summary.values()]
                rows.append({"system": system, "n": max(counts, default=0), "means": means})
            directions.append({"name": name, "source": d.get("source"), "target": d.get("target"), "rows": rows})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: not a readable evaluation (%s); left out of the model card", metrics_json, exc)
        return None
    return {
        "options": meta.get("options"),
        "model_step": meta.get("model_step"),
        "sentences": meta.get("sentences"),
        "directions": directions,
    }


def model_card(model_file: Path, run: Path | None) -> dict[str, Any]:
    """What the page shows about a model: speakers, networks, preset, iterations, training time, features.

    ``model_file`` is the exported model (already checked to be one); ``run`` its run folder, or ``None``
    for a model file on its own. Raises :class:`~cyclegan_vc.checkpoint.CheckpointError` for an unreadable header.
    """
    metadata = read_metadata(model_file)
    payload = _plain(json.loads(metadata["structure"]))
    config = payload.get("config") or {}
    features = payload.get("features") or {}
    return {
        "speakers": dict(payload.get("speakers") or {}),
        "generator": payload.get("generator"),
        "generator_kwargs": payload.get("generator_kwargs") or {},
        "parameters": _parameters(model_file),
        "preset": preset_of(config),
        "iterations": payload.get("step"),
        "scheduled_iterations": (config.get("training") or {}).get("iterations"),
        "training_seconds": None if run is None else training_seconds(run),
        "sample_rate": features.get("sample_rate"),
        "f0_method": features.get("f0_method"),
        "validation": payload.get("metrics") or {},
        "package_version": metadata.get("package_version"),
    }

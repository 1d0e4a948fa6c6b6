"""Checkpoints: the full training state (exact resume) and the exported conversion model.

Both kinds are `safetensors <https://github.com/huggingface/safetensors>`_ files: tensors only, read
without executing any code, on any device (tensors are read on the CPU, then moved to the requested
device, so a file written on a GPU loads on a CPU-only machine). The file's string metadata holds
JSON documents:

=================  ==========================================================================
key                value
=================  ==========================================================================
``format``         ``"cyclegan_vc"`` (what the file is)
``format_version`` ``"1"`` (:data:`FORMAT_VERSION`; other versions are refused)
``kind``           ``"training_state"`` or ``"conversion_model"``
``package_version````cyclegan_vc.__version__`` of the writer
``structure``      JSON of the nested payload; each tensor is ``{"__tensor__": "<name>"}``, dicts
                   with integer keys (optimiser states) are ``{"__int_keys__": {...}}``
``sha256``         SHA-256 over every tensor (name, dtype, shape, bytes, in name order) and every
                   other metadata entry; a changed byte, a missing tensor or an edited entry is refused
=================  ==========================================================================

Files are written to a temporary file in the same folder, flushed to disk and renamed over the target,
so a crash never leaves a half-written checkpoint.

Training state payload (:data:`STATE_KIND`, written by :meth:`cyclegan_vc.training.Trainer.save`):
``networks``/``optimizers`` keyed by role (``G_ab``, ``G_ba``, ``D_a``, ``D_b``; ``D2_a``, ``D2_b`` with the
two-step adversarial loss), ``ema`` (the generators' weight averages or ``None``), ``schedule``, ``step``,
``rng`` (python, numpy, torch[, cuda]), ``sampler`` (the crop sampler's generator), ``masks`` (the
filling-in-frames mask generator or ``None``), ``best``, ``config``.

Conversion model payload (:data:`MODEL_KIND`, :func:`export_model` / :func:`load_model`): ``generators``
(``G_ab``, ``G_ba`` state dicts), ``generator`` (registry name), ``generator_kwargs``, ``stats``
(``A``/``B`` :meth:`SpeakerStats.to_dict`), ``features`` (:meth:`FeatureConfig.to_dict`), ``speakers``
(role -> name), ``step``, ``config`` (the full training config) and ``metrics``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from . import __version__
from .features import FeatureConfig
from .models import build_generator
from .stats import SpeakerStats
from .utils import atomic_write, atomic_write_bytes

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_BEST",
    "MODEL_KIND",
    "MODEL_LATEST",
    "STATE_KIND",
    "CheckpointError",
    "ConversionModel",
    "copy_checkpoint",
    "export_model",
    "load_checkpoint",
    "load_model",
    "read_metadata",
    "save_checkpoint",
]

FORMAT = "cyclegan_vc"
FORMAT_VERSION = 1
#: A run directory's exported models: the latest weights, and the best by validation score.
MODEL_LATEST = "model_latest.safetensors"
MODEL_BEST = "model_best.safetensors"
STATE_KIND = "training_state"
MODEL_KIND = "conversion_model"
_TENSOR = "__tensor__"
_INT_KEYS = "__int_keys__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# --- nested payload <-> (flat tensors, JSON structure) ---------------------------------------------


def _flatten(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().to("cpu").contiguous()
        return {_TENSOR: name}
    if isinstance(value, np.ndarray):
        return _flatten(torch.from_numpy(np.ascontiguousarray(value)), name, tensors)
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if any(k in (_TENSOR, _INT_KEYS) for k in value):
                raise ValueError(f"reserved key in checkpoint payload at {name!r}")
            return {k: _flatten(v, f"{name}/{k}" if name else k, tensors) for k, v in value.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {_INT_KEYS: {str(k): _flatten(v, f"{name}/{k}", tensors) for k, v in value.items()}}
        raise TypeError(f"checkpoint payload at {name!r}: keys must be all strings or all integers")
    if isinstance(value, (list, tuple)):
        return [_flatten(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint payload at {name!r}: {type(value).__name__} is not a tensor, number, string or container")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor], used: set[str], path: Path) -> Any:
    if isinstance(node, dict):
        if set(node) == {_TENSOR}:
            name = node[_TENSOR]
            if name not in tensors:
                raise CheckpointError(path, f"missing tensor {name!r}")
            used.add(name)
            return tensors[name]
        if set(node) == {_INT_KEYS}:
            return {int(k): _unflatten(v, tensors, used, path) for k, v in node[_INT_KEYS].items()}
        return {k: _unflatten(v, tensors, used, path) for k, v in node.items()}
    if isinstance(node, list):
        return [_unflatten(v, tensors, used, path) for v in node]
    return node


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    for key in sorted(metadata):
        if key != "sha256":
            h.update(f"{key}\0{metadata[key]}\0".encode())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], kind: str) -> Path:
    """Write a nested ``payload`` (tensors, numbers, strings, lists, dicts) atomically as ``kind``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(payload, "", tensors)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "package_version": __version__,
        "structure": json.dumps(structure, separators=(",", ":")),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    # serialised here and written by our atomic write alone: safetensors' save_file makes its own
    # temporary (.tmpXXXXXX) beside the target, which a kill -9 would leave behind, unnamed and never swept
    return atomic_write_bytes(path, save(tensors, metadata=metadata), durable=True)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The checked header of a checkpoint (format, version), without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable checkpoint (safetensors: {exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(path, "not a cyclegan-vc checkpoint (no 'format: cyclegan_vc' metadata)")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            path, f"checkpoint format version {version!r} is not supported (this cyclegan-vc {__version__} reads {FORMAT_VERSION})"
        )
    for key in ("kind", "structure", "sha256"):
        if key not in metadata:
            raise CheckpointError(path, f"metadata entry {key!r} is missing")
    return metadata


def load_checkpoint(path: str | os.PathLike, kind: str, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read, verify (format, version, kind, sha256, structure) and return the payload on ``device``."""
    path = Path(path)
    metadata = read_metadata(path)
    if metadata["kind"] != kind:
        raise CheckpointError(path, f"is a {metadata['kind']!r} checkpoint, expected {kind!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"cannot read tensors (safetensors: {exc})") from None
    if _digest(tensors, metadata) != metadata["sha256"]:
        raise CheckpointError(path, "contents do not match the stored sha256 (the file was corrupted or modified)")
    try:
        structure = json.loads(metadata["structure"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"metadata 'structure' is not valid JSON: {exc}") from None
    used: set[str] = set()
    payload = _unflatten(structure, tensors, used, path)
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(path, f"unexpected tensors {extra[:5]}")
    device = torch.device(device)
    return _to_device(payload, device)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def require_keys(payload: dict[str, Any], keys: tuple[str, ...], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming the first of ``keys`` missing from ``payload``."""
    for key in keys:
        if key not in payload:
            raise CheckpointError(path, f"missing key {key!r}")


def copy_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a checkpoint file atomically (for milestone and best copies)."""
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp), durable=True)


# --- the exported conversion model ----------------------------------------------------------------

MODEL_KEYS = ("generators", "generator", "generator_kwargs", "stats", "features", "speakers", "step", "config")


@dataclass
class ConversionModel:
    """Both generators (eval mode) with everything conversion needs.

    Attributes:
        generators: ``{"G_ab": A->B, "G_ba": B->A}`` on the loading device, in eval mode.
        stats: ``{"A": SpeakerStats, "B": SpeakerStats}`` from the training split.
        features: the WORLD feature settings the model was trained on.
        generator: registry name; ``generator_kwargs`` its full constructor arguments.
        speakers: role -> speaker name (``{"A": "SF1", "B": "TM3"}``).
        step: training iterations behind the weights.
        config: the full training configuration (nested dict).
        metrics: validation numbers at export time (may be empty).
        package_version: the cyclegan-vc version that wrote the file.
    """

    generators: dict[str, nn.Module]
    stats: dict[str, SpeakerStats]
    features: FeatureConfig
    generator: str
    generator_kwargs: dict[str, Any]
    speakers: dict[str, str]
    step: int
    config: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    package_version: str = __version__


def export_model(
    path: str | os.PathLike,
    generators: dict[str, nn.Module],
    *,
    generator: str,
    generator_kwargs: dict[str, Any],
    stats: dict[str, SpeakerStats],
    features: FeatureConfig,
    speakers: dict[str, str],
    step: int,
    config: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write the conversion model (``G_ab``, ``G_ba`` weights in float32 and everything in
    :class:`ConversionModel`) atomically."""
    payload = {
        "generators": {role: {k: v.float() for k, v in generators[role].state_dict().items()} for role in ("G_ab", "G_ba")},
        "generator": generator,
        "generator_kwargs": dict(generator_kwargs),
        "stats": {role: stats[role].to_dict() for role in ("A", "B")},
        "features": features.to_dict(),
        "speakers": dict(speakers),
        "step": int(step),
        "config": config,
        "metrics": dict(metrics or {}),
    }
    return save_checkpoint(path, payload, MODEL_KIND)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ConversionModel:
    """Load an exported model onto ``device`` (any device, whatever it was saved from); generators in eval mode.

    ``path`` is a model file, or a run directory: its ``model_latest.safetensors`` (the model at the end
    of training, as the paper evaluates), else ``model_best``. ``model_best`` (the best validation MCD)
    is used only by naming its file: on short runs the MCD favours early, barely converted models.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / MODEL_LATEST, path / MODEL_BEST]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(path, f"run directory holds no {MODEL_LATEST} or {MODEL_BEST}")
        path = found
    payload = load_checkpoint(path, MODEL_KIND, device=device)
    require_keys(payload, MODEL_KEYS, path)
    try:
        generators = {}
        for role in ("G_ab", "G_ba"):
            # Built without memory on the meta device (random initialisation would be thrown away),
            # then given the stored tensors themselves.
            with torch.device("meta"):
                net = build_generator(payload["generator"], **payload["generator_kwargs"])
            net.load_state_dict(payload["generators"][role], strict=True, assign=True)
            generators[role] = net.to(device).eval()
        stats = {role: SpeakerStats.from_dict(payload["stats"][role]) for role in ("A", "B")}
        features = FeatureConfig.from_dict(payload["features"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"inconsistent model contents: {exc}") from None
    return ConversionModel(
        generators=generators,
        stats=stats,
        features=features,
        generator=payload["generator"],
        generator_kwargs=payload["generator_kwargs"],
        speakers=payload["speakers"],
        step=int(payload["step"]),
        config=payload["config"],
        metrics=payload.get("metrics", {}),
        package_version=read_metadata(path)["package_version"],
    )

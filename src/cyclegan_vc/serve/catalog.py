"""The model catalogue: every trained model under the served folder, addressed by id, never by a client's path.

The folder is scanned once, when the server starts (restart it to see models trained since):

- a **run folder** (one holding ``model_latest.safetensors`` or ``model_best.safetensors``) is one
  model, its ``model_latest`` (else ``model_best``), as ``cyclegan-vc convert --model RUN`` loads it;
  its id is the folder's path relative to the served folder (``demo/run``);
- any other **exported model file** (a ``*.safetensors`` whose header says ``conversion_model``) is one
  model; its id is the file's relative path (``exported/sf1-tm3.safetensors``);
- an **evaluation** (a folder with ``metrics.json``) belongs to the run it sits in
  (``RUN/evaluation/``, as the recipe writes it), or to the model its ``meta.model`` names
  (``demo-output/report`` beside ``demo-output/run``, as the demo writes it). Its ``report.html`` and
  the files of its ``audio/`` folder are the only files the server sends from the folder.

Every path is resolved and must lie inside the served folder: a symlink that leads out of it is
skipped when scanning and refused when loading. Folders are walked without following symlinks; hidden
folders and a run's ``checkpoints/``, ``tensorboard/`` and ``samples/`` are not searched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import MODEL_BEST, MODEL_KIND, MODEL_LATEST, CheckpointError, read_metadata
from ..utils import UserError
from .card import evaluation_summary, model_card
from .errors import ApiError

__all__ = ["Catalog", "ModelEntry", "Report"]

log = logging.getLogger(__name__)

#: Folders never searched for models: a run's own bulk (training states, logs, samples) and caches.
_SKIPPED_FOLDERS = {"checkpoints", "tensorboard", "samples", "__pycache__", "node_modules"}


@dataclass(frozen=True)
class Report:
    """An evaluation of a model: its summaries, and the files of its report that may be sent.

    Attributes:
        key: the report's opaque id in URLs (``/reports/<key>/report.html``).
        folder: the evaluation's folder (resolved).
        files: relative name (``"report.html"``, ``"audio/A2B_200001_converted.wav"``) -> resolved path;
            nothing else of the folder is ever sent.
        summary: :func:`~cyclegan_vc.serve.card.evaluation_summary` of its ``metrics.json``.
    """

    key: str
    folder: Path
    files: dict[str, Path]
    summary: dict[str, Any]


@dataclass
class ModelEntry:
    """One servable model: ``id`` (what clients send), its ``path`` (the resolved model file), its ``run``
    folder (``None`` for a file on its own), its ``card`` and its evaluations."""

    id: str
    path: Path
    run: Path | None
    card: dict[str, Any]
    reports: list[Report] = field(default_factory=list)

    def describe(self, root: Path) -> dict[str, Any]:
        """The JSON of ``GET /api/models`` for this model."""
        evaluations = [
            {
                **report.summary,
                "folder": report.folder.relative_to(root).as_posix(),
                "report_url": f"/reports/{report.key}/report.html" if "report.html" in report.files else None,
            }
            for report in self.reports
        ]
        return {"id": self.id, "kind": "run" if self.run else "model file", **self.card, "evaluations": evaluations}


def _inside(path: Path, root: Path) -> Path | None:
    """``path`` resolved (symlinks followed) when it is a file inside ``root``, else ``None``."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_file() and resolved.is_relative_to(root) else None


def _is_model(path: Path) -> bool:
    try:
        return read_metadata(path)["kind"] == MODEL_KIND
    except CheckpointError:
        return False


class Catalog:
    """The models under ``root``, scanned once (module docstring); :meth:`get` finds one by id.

    Raises :class:`~cyclegan_vc.utils.UserError` when ``root`` is not a folder.
    """

    def __init__(self, root: str | os.PathLike):
        given = Path(root)
        if not given.is_dir():
            raise UserError(f"serve --models {given}: no such folder")
        self.root = given.resolve()
        self.models: dict[str, ModelEntry] = {}
        self.reports: dict[str, Report] = {}
        self._scan()

    def get(self, model_id: str) -> ModelEntry:
        """The model called ``model_id`` (a key of :attr:`models`, never opened as a path); 404 otherwise."""
        entry = self.models.get(model_id) if isinstance(model_id, str) else None
        if entry is None:
            raise ApiError(404, f"no model {model_id!r} on this server; GET /api/models lists the {len(self.models)} it serves")
        return entry

    def model_file(self, entry: ModelEntry) -> Path:
        """The entry's model file, checked again to be a file inside the served folder (it may have been
        replaced since the scan); 404 otherwise."""
        path = _inside(entry.path, self.root)
        if path is None:
            raise ApiError(404, f"model {entry.id!r} is no longer in the served folder")
        return path

    def report_file(self, key: str, name: str) -> Path:
        """A file of a report by its listed name, checked again to be inside the served folder; 404 otherwise."""
        report = self.reports.get(key)
        listed = None if report is None else report.files.get(name)
        path = None if listed is None else _inside(listed, self.root)
        if path is None:
            raise ApiError(404, f"no report file {name!r} here")
        return path

    # -- scanning ----------------------------------------------------------------------------
    def _id(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return self.root.name if rel == "." else rel

    def _scan(self) -> None:
        evaluations: list[Path] = []
        for folder, subfolders, files in os.walk(self.root):  # symlinked folders are listed, not entered
            here = Path(folder)
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in _SKIPPED_FOLDERS)
            if "metrics.json" in files:
                evaluations.append(here)
            run_files = [name for name in (MODEL_LATEST, MODEL_BEST) if name in files]
            run_model = None
            for name in sorted(files):
                if not name.endswith(".safetensors") or name.startswith("."):
                    continue
                path = _inside(here / name, self.root)
                if path is None:
                    log.warning("skipped %s: it leads outside %s", here / name, self.root)
                elif name in run_files:  # the run's model: model_latest, else model_best (as load_model)
                    if (run_model is None or name == MODEL_LATEST) and _is_model(path):
                        run_model = path
                elif _is_model(path):
                    self._add(self._id(here / name), path, None)
            if run_model is not None:
                self._add(self._id(here), run_model, here)
        for folder in evaluations:
            self._attach(folder)
        log.info("serving %d model(s) from %s", len(self.models), self.root)

    def _add(self, model_id: str, path: Path, run: Path | None) -> None:
        try:
            card = model_card(path, run)
        except (CheckpointError, OSError, ValueError) as exc:
            log.warning("skipped %s: %s", path, exc)
            return
        self.models[model_id] = ModelEntry(model_id, path, run, card)

    def _owner(self, folder: Path) -> ModelEntry | None:
        """The model an evaluation folder belongs to: the run it sits in, or the one its ``meta.model`` names."""
        for entry in self.models.values():
            if entry.run is not None and folder.parent == entry.run:
                return entry
        try:
            named = (json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("meta") or {}).get("model")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(named, str) or not named:
            return None
        candidates = [Path(named)] if Path(named).is_absolute() else [folder.parent / Path(named).name, Path.cwd() / named]
        for candidate in candidates:
            try:
                resolved = candidate.resolve()
            except (OSError, RuntimeError):
                continue
            for entry in self.models.values():
                if resolved in (entry.run, entry.path):
                    return entry
        return None

    def _attach(self, folder: Path) -> None:
        entry = self._owner(folder)
        if entry is None:
            return
        summary = evaluation_summary(folder / "metrics.json")
        if summary is None:
            return
        files: dict[str, Path] = {}
        if (report := _inside(folder / "report.html", self.root)) is not None:
            files["report.html"] = report
        audio = folder / "audio"
        if audio.is_dir() and not audio.is_symlink():
            for item in sorted(audio.iterdir()):
                if item.suffix.lower() == ".wav" and (path := _inside(item, self.root)) is not None:
                    files[f"audio/{item.name}"] = path
        key = hashlib.sha256(folder.relative_to(self.root).as_posix().encode()).hexdigest()[:16]
        report = Report(key, folder, files, summary)
        self.reports[key] = report
        entry.reports.append(report)

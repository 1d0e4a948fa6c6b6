"""The offline end-to-end demo: demo corpus -> prepare -> train -> convert and evaluate."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

from .data.demo_corpus import make_demo_corpus
from .evaluation import EvaluationRun, evaluate
from .options import ConversionOptions
from .prepare import format_summary, prepare
from .training import train
from .utils import UserError

__all__ = ["MARKER", "demo"]

log = logging.getLogger(__name__)

VOICES = ("slt", "rms")

#: The file that marks a folder as the demo's own output (written when the demo starts in it).
MARKER = ".cyclegan-vc-demo"


def _claim(out: Path) -> None:
    """Make ``out`` the demo's folder: a new or empty folder is marked as the demo's; a marked one (an
    earlier demo's) is reused; any other folder is refused, so that the demo never deletes what it
    did not write."""
    if out.exists() and not out.is_dir():
        raise UserError(f"demo --out {out}: is a file, not a folder")
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise UserError(
            f"demo --out {out}: the folder is not empty and holds no earlier demo output (no {MARKER} file); "
            "choose a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `cyclegan-vc demo`; the demo rewrites this folder on its next run\n")


def demo(
    out: str | os.PathLike = "demo-output",
    *,
    minutes: float | None = 12.0,
    iterations: int | None = None,
    preset: str = "small",
    n_train: int | None = None,
    n_eval: int | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    options: ConversionOptions | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> EvaluationRun:
    """Run the whole toolkit on the offline flite corpus (voice A = slt, voice B = rms).

    Layout of ``out``: ``corpus/`` (rendered audio), ``prepared/`` (features, statistics),
    ``run/`` (config, checkpoints, TensorBoard logs, exported model) and ``report/``
    (metrics.json, summary.md, report.html, converted audio), with a marker file (:data:`MARKER`).
    ``out`` must be new, empty or an earlier demo's output (:class:`~cyclegan_vc.utils.UserError`
    otherwise): each stage reuses what an earlier demo left (the corpus, the feature cache), and
    training starts afresh (the earlier ``run/`` is deleted).

    ``options``: how the converted speech is made (:class:`~cyclegan_vc.options.ConversionOptions`;
    default: the paper's conversion). ``jobs``: worker processes of the WORLD analyses and the
    conversions (default: all cores; 1: in this process).

    Returns the :class:`~cyclegan_vc.evaluation.EvaluationRun` (its ``table()``, its ``report`` path).
    """
    out = Path(out)
    _claim(out)
    corpus = make_demo_corpus(out / "corpus", voices=VOICES, n_train=n_train, n_eval=n_eval, progress=progress)
    a, b = VOICES
    manifest = prepare(
        corpus / "training" / a,
        corpus / "training" / b,
        out / "prepared",
        source_eval=corpus / "evaluation" / a,
        target_eval=corpus / "evaluation" / b,
        jobs=jobs,
        progress=progress,
    )
    log.info("prepared data:\n%s", format_summary(manifest))
    run = out / "run"
    if run.exists():  # an earlier demo's (the folder is marked as the demo's): a new demo trains afresh
        shutil.rmtree(run)
    train(
        data=out / "prepared",
        run=run,
        preset=preset,
        iterations=iterations,
        minutes=minutes,
        device=device,
        overrides=list(overrides),
        progress=progress,
    )
    return evaluate(
        run, corpus / "evaluation" / a, corpus / "evaluation" / b, out / "report", device=device, options=options,
        jobs=jobs, progress=progress,
    )

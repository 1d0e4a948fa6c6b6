"""The offline end-to-end demo: demo corpus -> prepare -> train -> convert and evaluate."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

from .data.demo_corpus import make_demo_corpus
from .evaluation import EvaluationRun, evaluate
from .prepare import format_summary, prepare
from .training import train

__all__ = ["demo"]

log = logging.getLogger(__name__)

VOICES = ("slt", "rms")


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
    energy: str = "generator",
    smooth: int = 0,
    f0_range: str = "full",
    jobs: int | None = None,
    progress: bool = True,
) -> EvaluationRun:
    """Run the whole toolkit on the offline flite corpus (voice A = slt, voice B = rms).

    Layout of ``out``: ``corpus/`` (rendered audio), ``prepared/`` (features, statistics),
    ``run/`` (config, checkpoints, TensorBoard logs, exported model) and ``report/``
    (metrics.json, summary.md, report.html, converted audio). Each stage reuses what an earlier
    demo left (the corpus, the feature cache); training starts afresh.

    ``energy``: the converted speech's c0, ``"generator"`` or ``"source"`` (see
    :class:`~cyclegan_vc.conversion.VoiceConverter`); ``smooth``, ``f0_range``: the other conversion options
    (same place). ``jobs``: worker processes of the WORLD analyses and
    the conversions (default: all cores; 1: in this process).

    Returns the :class:`~cyclegan_vc.evaluation.EvaluationRun` (its ``table()``, its ``report`` path).
    """
    out = Path(out)
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
    if run.exists():  # the demo owns this folder: a new demo trains afresh
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
        run, corpus / "evaluation" / a, corpus / "evaluation" / b, out / "report", device=device, energy=energy,
        smooth=smooth, f0_range=f0_range, jobs=jobs, progress=progress,
    )

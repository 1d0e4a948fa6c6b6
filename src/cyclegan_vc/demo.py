"""The offline end-to-end demo: demo corpus -> prepare -> train -> convert and evaluate."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from .data.demo_corpus import make_demo_corpus
from .evaluation import evaluate
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
) -> dict:
    """Run the whole toolkit on the offline flite corpus (voice A = slt, voice B = rms).

    Layout of ``out``: ``corpus/`` (rendered audio), ``prepared/`` (features, statistics),
    ``run/`` (config, checkpoints, TensorBoard logs, exported model) and ``report/``
    (metrics.json, summary.md, report.html, converted audio). Each stage reuses what an earlier
    demo left (the corpus, the feature cache); training starts afresh.

    Returns the evaluation results; the summary table and the report's path are printed.
    """
    out = Path(out)
    corpus = make_demo_corpus(out / "corpus", voices=VOICES, n_train=n_train, n_eval=n_eval)
    a, b = VOICES
    manifest = prepare(
        corpus / "training" / a,
        corpus / "training" / b,
        out / "prepared",
        source_eval=corpus / "evaluation" / a,
        target_eval=corpus / "evaluation" / b,
    )
    print(format_summary(manifest))
    train(
        data=out / "prepared",
        run=out / "run",
        preset=preset,
        iterations=iterations,
        minutes=minutes,
        device=device,
        overrides=list(overrides),
        fresh=True,
    )
    return evaluate(out / "run", corpus / "evaluation" / a, corpus / "evaluation" / b, out / "report", device=device)

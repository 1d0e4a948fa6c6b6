"""The paper's protocol on VCC 2016: non-parallel split, training, conversion and evaluation."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from .evaluation import EvaluationRun, evaluate
from .features import FeatureConfig
from .options import ConversionOptions
from .prepare import format_summary, prepare
from .training import train

__all__ = ["recipe"]

log = logging.getLogger(__name__)


def recipe(
    root: str | os.PathLike,
    source: str = "SF1",
    target: str = "TF2",
    run: str | os.PathLike = "runs/vcc2016",
    *,
    preset: str = "small",
    minutes: float | None = None,
    iterations: int | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    seed: int | None = None,
    options: ConversionOptions | None = None,
    mcep_dim: int | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> EvaluationRun:
    """Run CycleGAN-VC's VCC 2016 protocol for one speaker pair.

    ``root`` holds ``vcc2016_training/`` and ``evaluation_all/`` (the official download or
    ``../shared/data/vcc2016``). The first 81 of the source's 162 training sentences and the last 81
    of the target's are used (no sentence on both sides); the 54 evaluation sentences are
    converted both ways and scored beside the baselines. Outputs go to ``run/``: ``prepared/``,
    the training run itself, and ``evaluation/`` (metrics.json, summary.md, report.html).

    ``options``: how the evaluated conversion is made (:class:`~cyclegan_vc.options.ConversionOptions`;
    default: the paper's). ``jobs``: worker processes of the WORLD analyses (prepare) and the
    conversions (evaluate); default all cores, 1 in this process.

    Returns the :class:`~cyclegan_vc.evaluation.EvaluationRun`.
    """
    root, run = Path(root), Path(run)
    training, evaluation = root / "vcc2016_training", root / "evaluation_all"
    for folder in (training / source, training / target, evaluation / source, evaluation / target):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} not found: --root must hold vcc2016_training/ and evaluation_all/ "
                "(`cyclegan-vc download vcc2016 --dest DIR` fetches them)"
            )
    features = FeatureConfig() if mcep_dim is None else FeatureConfig(mcep_dim=mcep_dim)
    prepared = run / "prepared"
    manifest = prepare(
        training / source,
        training / target,
        prepared,
        source_eval=evaluation / source,
        target_eval=evaluation / target,
        paper_split=True,
        features=features,
        cache_dir=cache_dir,
        jobs=jobs,
        progress=progress,
    )
    log.info("prepared data:\n%s", format_summary(manifest))
    dims = [] if mcep_dim is None else [
        f"model.generator_kwargs.in_channels={mcep_dim}", f"model.discriminator_kwargs.in_height={mcep_dim}"
    ]
    overrides = dims + list(overrides)
    if seed is not None:
        overrides.append(f"training.seed={seed}")
    train(
        data=prepared,
        run=run,
        preset=preset,
        iterations=iterations,
        minutes=minutes,
        device=device,
        overrides=overrides,
        progress=progress,
    )
    return evaluate(
        run, evaluation / source, evaluation / target, run / "evaluation", device=device, options=options,
        jobs=jobs, progress=progress,
    )

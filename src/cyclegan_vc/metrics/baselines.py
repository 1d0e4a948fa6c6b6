"""The systems a conversion is scored beside: what each baseline is, and the mean-variance converter.

- ``no_conversion``: the source speech itself, scored against the target (the ceiling to beat);
- ``mean_variance``: per-dimension mean-variance conversion of the coded envelope and the log-Gaussian
  F0 transform, WORLD synthesis (:func:`mean_variance_convert`);
- ``world_resynthesis``: the target speech after WORLD analysis-synthesis (the floor of the pipeline).
"""

from __future__ import annotations

import numpy as np

from ..stats import SpeakerStats, convert_f0, denormalize, normalize

__all__ = ["SYSTEMS", "SYSTEM_DESCRIPTIONS", "mean_variance_convert"]

#: Systems in display order; results may hold any subset, plus others (shown after these).
SYSTEMS = ("cyclegan", "no_conversion", "mean_variance", "world_resynthesis")

SYSTEM_DESCRIPTIONS = {
    "cyclegan": "CycleGAN-VC: the trained model's conversion",
    "no_conversion": "the source speech itself, scored against the target (the ceiling to beat)",
    "mean_variance": "baseline: MCEP mean-variance conversion and log-Gaussian F0 transform, WORLD synthesis",
    "world_resynthesis": "the target speech after WORLD analysis-synthesis (the floor of the pipeline)",
}


def mean_variance_convert(
    mcep: np.ndarray, f0: np.ndarray, source: SpeakerStats, target: SpeakerStats
) -> tuple[np.ndarray, np.ndarray]:
    """The mean-variance baseline: per-dimension MCEP normalisation with the source speaker's statistics
    and de-normalisation with the target's; F0 by the log-Gaussian transform (:func:`stats.convert_f0`).

    Args:
        mcep: ``(T, D)`` coded spectral envelope (the model's features, ``WorldFeatures.mcep``).
        f0: ``(T,)`` F0 in Hz, 0 on unvoiced frames.
        source, target: training-set statistics of the two speakers.

    Returns:
        ``(mcep (T, D), f0 (T,))`` converted; aperiodicity is left to the caller (copied from the source).
    """
    mcep = np.asarray(mcep, dtype=np.float64)
    if mcep.ndim != 2 or mcep.shape[1] != source.mcep_mean.shape[0] or mcep.shape[1] != target.mcep_mean.shape[0]:
        raise ValueError(
            f"mcep of shape {mcep.shape} does not match the statistics' {source.mcep_mean.shape[0]} / "
            f"{target.mcep_mean.shape[0]} dimensions"
        )
    f0 = np.asarray(f0, dtype=np.float64)
    if f0.shape != (mcep.shape[0],):
        raise ValueError(f"f0 of shape {f0.shape} does not match {mcep.shape[0]} frames")
    return denormalize(normalize(mcep, source), target), convert_f0(f0, source, target)


# --------------------------------------------------------------------------------------------------
# Per-utterance evaluation
# --------------------------------------------------------------------------------------------------


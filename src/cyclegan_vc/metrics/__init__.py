"""Objective evaluation: mel-cepstral distortion, F0 error, speaker similarity, DNSMOS, baselines, results.

- :mod:`.objective`: the metrics against the real target utterance (MCD, F0 RMSE, V/UV) and their
  conventions, quoted by every report;
- :mod:`.scorers`: the pretrained speaker encoder (similarity) and DNSMOS (naturalness);
- :mod:`.baselines`: the systems scored beside a conversion, and the mean-variance converter;
- :mod:`.results`: the results data model (per direction, system and utterance) and its summaries;
- :mod:`.evaluator`: :class:`Evaluator`, which scores utterances with the scorers loaded once and
  every waveform's analysis cached, so a reference used by several systems is analysed once.
"""

from .baselines import SYSTEM_DESCRIPTIONS, SYSTEMS, mean_variance_convert
from .evaluator import Evaluator
from .objective import (
    DNSMOS_CONVENTION,
    EVAL_ALPHA,
    EVAL_ORDER,
    F0_CONVENTION,
    MCD_CONVENTION,
    SIMILARITY_CONVENTION,
    STEP_PATTERNS,
    VUV_CONVENTION,
    Alignment,
    EvalFeatures,
    align_mel_cepstra,
    conventions,
    dtw,
    f0_rmse_cents,
    frame_mcd,
    mcd,
    mel_cepstrum,
    vuv_error,
)
from .results import ALL_METRICS, METRICS, DirectionResults, EvaluationResults, MetricInfo, UtteranceMetrics
from .scorers import MODEL_RATE, DnsmosScorer, SpeakerEncoder, cosine

__all__ = [
    "ALL_METRICS",
    "DNSMOS_CONVENTION",
    "EVAL_ALPHA",
    "EVAL_ORDER",
    "F0_CONVENTION",
    "MCD_CONVENTION",
    "METRICS",
    "MODEL_RATE",
    "SIMILARITY_CONVENTION",
    "STEP_PATTERNS",
    "SYSTEMS",
    "SYSTEM_DESCRIPTIONS",
    "VUV_CONVENTION",
    "Alignment",
    "DirectionResults",
    "DnsmosScorer",
    "EvalFeatures",
    "EvaluationResults",
    "Evaluator",
    "MetricInfo",
    "SpeakerEncoder",
    "UtteranceMetrics",
    "align_mel_cepstra",
    "conventions",
    "cosine",
    "dtw",
    "f0_rmse_cents",
    "frame_mcd",
    "mcd",
    "mean_variance_convert",
    "mel_cepstrum",
    "vuv_error",
]

"""Validation during training: held-out utterances converted as ``convert`` converts them, and scored.

With parallel eval pairs, each pair's utterance is converted in both directions by a
:class:`~cyclegan_vc.conversion.VoiceConverter` over the trainer's current generators (their weight
averages with ``training.generator_ema``) with one :class:`~cyclegan_vc.options.ConversionOptions`
(default: the paper's conversion): the converter's F0 transform and mel-cepstra, the source's cached
aperiodicity, WORLD synthesis. The score is the mel-cepstral distortion of
:func:`cyclegan_vc.metrics.mcd` between SPTK mel-cepstra of the synthesised waveform and of the real
target recording of the same sentence (DTW; see ``metrics.MCD_CONVENTION``), averaged over both
directions. Without eval pairs, the score is the cycle reconstruction error (L1 on normalised MCEPs)
of whole training utterances. Lower is better.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..audio import AudioError, load_audio, save_audio
from ..directions import DIRECTIONS
from ..features import FeatureConfig, WorldFeatures, decode_aperiodicity, synthesize
from ..losses import l1
from ..options import ConversionOptions
from .data import EvalUtterance

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["ReferenceCepstra", "cycle_error", "validate"]

log = logging.getLogger(__name__)


class ReferenceCepstra:
    """SPTK mel-cepstra of the real eval recordings, computed once per utterance and kept.

    A recording that cannot be read is replaced by the WORLD resynthesis of its cached features, with
    a warning.
    """

    def __init__(self, features: FeatureConfig) -> None:
        self.features = features
        self._cache: dict[str, Any] = {}

    def __call__(self, utterance: EvalUtterance, role: str):
        from ..metrics import mel_cepstrum

        key = f"{role}/{utterance.id}"
        if key not in self._cache:
            features = self.features
            wave = None
            if utterance.audio:
                try:
                    wave, _ = load_audio(utterance.audio, features.sample_rate)
                except (AudioError, OSError) as exc:
                    log.warning("validation reference %s unreadable (%s); using its WORLD resynthesis", utterance.audio, exc)
            if wave is None:
                wave = synthesize(
                    WorldFeatures(utterance.f0, utterance.mcep, decode_aperiodicity(utterance.ap_coded, features)), features
                )
            self._cache[key] = mel_cepstrum(wave, features.sample_rate, features)
        return self._cache[key]


@torch.no_grad()
def validate(
    trainer: "Trainer",
    samples_dir: str | os.PathLike | None = None,
    writer: Any = None,
    options: ConversionOptions | None = None,
) -> dict[str, float]:
    """Score ``trainer``'s current generators; lower ``score`` is better.

    With eval pairs: converts each pair's utterance in both directions (module doc), writes
    ``<samples_dir>/A2B_<id>.wav`` and TensorBoard audio when given, and returns ``mcd_A2B``,
    ``mcd_B2A`` (dB, mean over utterances, :func:`cyclegan_vc.metrics.mcd` against the real target
    recording), ``mcd_none`` (the same between the two unconverted recordings: the no-conversion
    baseline; DTW is symmetric, so one number serves both directions) and ``score`` (mean of the two
    MCDs). Without eval pairs: :func:`cycle_error`.
    """
    data = trainer.data
    if data is None:
        raise RuntimeError("Trainer without data cannot validate")
    if not data.eval_pairs:
        return cycle_error(trainer)
    from ..metrics import mcd, mel_cepstrum

    features = data.features
    rate = features.sample_rate
    reference = trainer.reference_cepstra
    metrics: dict[str, float] = {}
    with trainer.converter(options) as converter:
        for name, d in DIRECTIONS.items():
            scores, baseline = [], []
            for pair in data.eval_pairs:
                source, target = (pair[0], pair[1]) if d.source == "A" else (pair[1], pair[0])
                feats = WorldFeatures(source.f0, source.mcep, decode_aperiodicity(source.ap_coded, features))
                wave = synthesize(converter.convert_features(feats, name), features)
                ref_mc = reference(target, d.target).mc
                scores.append(mcd(ref_mc, mel_cepstrum(wave, rate, features).mc))
                if name == "A2B":
                    baseline.append(mcd(ref_mc, reference(source, d.source).mc))
                sample = f"{name}_{source.id.replace('/', '_')}"
                if samples_dir is not None:
                    save_audio(Path(samples_dir) / f"{sample}.wav", wave, rate)
                if writer is not None:
                    clip = torch.from_numpy(np.clip(wave, -1.0, 1.0).astype(np.float32))[None]
                    writer.add_audio(f"samples/{sample}", clip, trainer.step, sample_rate=rate)
            metrics[f"mcd_{name}"] = float(np.mean(scores))
            if name == "A2B":  # the DTW is symmetric: the B2A baseline is the same number
                metrics["mcd_none"] = float(np.mean(baseline))
    metrics["score"] = (metrics["mcd_A2B"] + metrics["mcd_B2A"]) / 2
    return metrics


@torch.no_grad()
def cycle_error(trainer: "Trainer") -> dict[str, float]:
    """``cycle_l1``: mean L1 of ``G_ba(G_ab(x))`` against ``x`` over the first
    ``training.validation_utterances`` whole training utterances of A, and of ``G_ab(G_ba(y))``
    against ``y`` of B (normalised domain); ``score`` equal to it."""
    n = trainer.config.training.validation_utterances
    errors = []
    for d in DIRECTIONS.values():
        back = next(other for other in DIRECTIONS.values() if other.source == d.target)
        forward, backward = trainer.generator(d.generator), trainer.generator(back.generator)
        for array in trainer.data.mceps[d.source][:n]:
            x = torch.from_numpy(array)[None].to(trainer.device)
            with trainer.eval_mode(forward, backward), trainer.autocast():
                cycled = backward(forward(x))
            errors.append(float(l1(cycled, x)))
    value = float(np.mean(errors))
    return {"cycle_l1": value, "score": value}

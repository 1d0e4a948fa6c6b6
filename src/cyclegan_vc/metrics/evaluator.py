"""The evaluator: per-utterance metrics of a system's output, with the scorers loaded once and analyses cached."""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..features import FeatureConfig, SpectralEnvelope
from .objective import STEP_PATTERNS, EvalFeatures, align_mel_cepstra, conventions, f0_rmse_cents, mcd, mel_cepstrum, vuv_error
from .results import UtteranceMetrics
from .scorers import DnsmosScorer, SpeakerEncoder, cosine, unit

__all__ = ["Evaluator"]


def _digest(wave: np.ndarray, sample_rate: int) -> str:
    x = np.ascontiguousarray(wave, dtype=np.float64)
    return hashlib.sha1(x.tobytes() + f"|{x.shape}|{int(sample_rate)}".encode()).hexdigest()


class Evaluator:
    """Computes per-utterance metrics with the pretrained models loaded once and analyses cached.

    Every waveform's mel-cepstrum, embedding and DNSMOS are cached by content (SHA-1 of the samples and
    the rate), so the real target utterances shared by several systems are analysed once per run.

    Args:
        config: WORLD analysis settings of the evaluation (only ``f0_method``, the F0 range and
            ``frame_period`` matter; mel-cepstra are always order 24, alpha 0.42).
        speaker_similarity: compute ``sim_to_target`` / ``sim_to_source`` (resemblyzer).
        naturalness: compute DNSMOS (speechmos).
        band: Sakoe-Chiba band for the DTW in frames, ``None`` = none (the documented convention).
        step_pattern: DTW step pattern, ``"symmetric1"`` (the documented convention) or ``"symmetric2"``.
        encoder, dnsmos_scorer: already loaded models to share between evaluators; new ones (loaded
            lazily, on first use) when ``None``.
    """

    def __init__(
        self,
        config: FeatureConfig = FeatureConfig(),
        *,
        speaker_similarity: bool = True,
        naturalness: bool = True,
        band: int | None = None,
        step_pattern: str = "symmetric1",
        encoder: SpeakerEncoder | None = None,
        dnsmos_scorer: DnsmosScorer | None = None,
    ) -> None:
        self.config = config
        self.band = band
        if step_pattern not in STEP_PATTERNS:
            raise ValueError(f"step_pattern must be one of {sorted(STEP_PATTERNS)}, got {step_pattern!r}")
        self.step_pattern = step_pattern
        self.encoder = (encoder or SpeakerEncoder()) if speaker_similarity else None
        self.dnsmos_scorer = (dnsmos_scorer or DnsmosScorer()) if naturalness else None
        self._features: dict[str, EvalFeatures] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        self._dnsmos: dict[str, dict[str, float]] = {}

    def clear_cache(self) -> None:
        self._features.clear()
        self._embeddings.clear()
        self._dnsmos.clear()

    def conventions(self) -> dict[str, str]:
        """The convention strings of this evaluation (see :func:`conventions`)."""
        return conventions(self.config)

    def features(self, wave: np.ndarray, sample_rate: int, envelope: SpectralEnvelope | None = None) -> EvalFeatures:
        """Cached :func:`mel_cepstrum` of a waveform (``envelope``: its WORLD envelope, to reuse)."""
        key = _digest(wave, sample_rate)
        if key not in self._features:
            self._features[key] = mel_cepstrum(wave, sample_rate, self.config, envelope=envelope)
        return self._features[key]

    def analysis(self, wave: np.ndarray, sample_rate: int, envelope: SpectralEnvelope | None = None) -> tuple:
        """Everything this evaluator computes from one waveform alone: ``(features, embedding or None,
        dnsmos or None)`` (cached). Compute it in a worker process with an evaluator of the same
        settings and hand it to :meth:`prime` of the main one. ``envelope`` as for :meth:`features`."""
        return (
            self.features(wave, sample_rate, envelope),
            self.embedding(wave, sample_rate) if self.encoder is not None else None,
            self.dnsmos(wave, sample_rate) if self.dnsmos_scorer is not None else None,
        )

    def prime(self, wave: np.ndarray, sample_rate: int, analysis: tuple) -> None:
        """Put an :meth:`analysis` computed elsewhere into the caches of ``wave``."""
        key = _digest(wave, sample_rate)
        features, embedding, mos = analysis
        self._features[key] = features
        if embedding is not None:
            self._embeddings[key] = embedding
        if mos is not None:
            self._dnsmos[key] = mos

    def embedding(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Cached utterance embedding ``(256,)``."""
        if self.encoder is None:
            raise RuntimeError("speaker similarity is disabled for this Evaluator")
        key = _digest(wave, sample_rate)
        if key not in self._embeddings:
            self._embeddings[key] = self.encoder.embed(wave, sample_rate)
        return self._embeddings[key]

    def speaker_embedding(self, waves: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Speaker embedding ``(256,)``: L2-normalised mean of the (cached) utterance embeddings."""
        if len(waves) == 0:
            raise ValueError("a speaker embedding needs at least one reference waveform")
        return unit(np.mean([self.embedding(w, sample_rate) for w in waves], axis=0))

    def dnsmos(self, wave: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Cached DNSMOS scores ``{"ovrl", "sig", "bak", "p808"}``."""
        if self.dnsmos_scorer is None:
            raise RuntimeError("naturalness (DNSMOS) is disabled for this Evaluator")
        key = _digest(wave, sample_rate)
        if key not in self._dnsmos:
            self._dnsmos[key] = self.dnsmos_scorer(wave, sample_rate)
        return self._dnsmos[key]

    def evaluate_utterance(
        self,
        utt_id: str,
        test: np.ndarray,
        reference: np.ndarray,
        sample_rate: int,
        *,
        target_embedding: np.ndarray | None = None,
        source_embedding: np.ndarray | None = None,
    ) -> UtteranceMetrics:
        """Scores of one test waveform against the real target waveform of the same sentence."""
        ref = self.features(reference, sample_rate)
        tst = self.features(test, sample_rate)
        path = align_mel_cepstra(ref.mc, tst.mc, band=self.band, step_pattern=self.step_pattern).path
        nan = float("nan")
        sim_t = sim_s = nan
        if self.encoder is not None and (target_embedding is not None or source_embedding is not None):
            emb = self.embedding(test, sample_rate)
            sim_t = cosine(emb, target_embedding) if target_embedding is not None else nan
            sim_s = cosine(emb, source_embedding) if source_embedding is not None else nan
        mos = self.dnsmos(test, sample_rate) if self.dnsmos_scorer is not None else {}
        return UtteranceMetrics(
            id=str(utt_id),
            mcd_db=mcd(ref.mc, tst.mc, path=path),
            f0_rmse_cents=f0_rmse_cents(ref.f0, tst.f0, path),
            vuv_error=vuv_error(ref.f0, tst.f0, path),
            sim_to_target=sim_t,
            sim_to_source=sim_s,
            dnsmos_ovrl=mos.get("ovrl", nan),
            dnsmos_sig=mos.get("sig", nan),
            dnsmos_bak=mos.get("bak", nan),
            dnsmos_p808=mos.get("p808", nan),
            ref_frames=ref.n_frames,
            test_frames=tst.n_frames,
        )

    def evaluate_pairs(
        self,
        pairs: Iterable[Sequence],
        *,
        target_refs: Sequence[np.ndarray] = (),
        source_refs: Sequence[np.ndarray] = (),
        sample_rate: int | None = None,
        desc: str = "evaluate",
        progress: bool = True,
    ) -> list[UtteranceMetrics]:
        """Per-utterance metrics of one system in one direction.

        Args:
            pairs: ``(id, source_wave, converted_wave, target_wave)`` per sentence; the converted wave
                is scored against the real target wave of the same sentence. (The source wave is not
                scored here; the "no_conversion" system passes it as the converted wave.)
            target_refs: real utterances of the target speaker for its speaker embedding (training
                utterances, not the evaluated sentences); required when speaker similarity is on.
            source_refs: the same for the source speaker (``sim_to_source``); may be empty (NaN).
            sample_rate: rate of every wave in Hz; default ``config.sample_rate``.
            desc: progress-bar label.
            progress: show a tqdm progress bar.

        Returns:
            One :class:`UtteranceMetrics` per pair, in order.
        """
        rate = int(sample_rate or self.config.sample_rate)
        pairs = list(pairs)
        tgt_emb = src_emb = None
        if self.encoder is not None:
            if len(target_refs) == 0:
                raise ValueError("speaker similarity needs target_refs (real target-speaker utterances)")
            tgt_emb = self.speaker_embedding(target_refs, rate)
            src_emb = self.speaker_embedding(source_refs, rate) if len(source_refs) else None
        rows = []
        for item in tqdm(pairs, desc=desc, unit="utt", disable=not progress):
            if len(item) != 4:
                raise ValueError(f"each pair must be (id, source_wave, converted_wave, target_wave), got {len(item)} items")
            utt_id, _source, converted, target = item
            try:
                rows.append(
                    self.evaluate_utterance(
                        utt_id, converted, target, rate, target_embedding=tgt_emb, source_embedding=src_emb
                    )
                )
            except ValueError as exc:
                raise ValueError(f"utterance {utt_id}: {exc}") from exc
        return rows


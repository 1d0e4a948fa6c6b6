"""The pretrained scorers: resemblyzer's speaker encoder (similarity) and DNSMOS (naturalness).

Both models (resemblyzer's ``pretrained.pt``, speechmos's ONNX files) ship inside their wheels and run
on the CPU, offline; each is loaded once, on first use.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable

import numpy as np

from ..audio import resample
from .objective import check_wave

__all__ = ["MODEL_RATE", "DnsmosScorer", "SpeakerEncoder", "cosine", "unit"]

logger = logging.getLogger(__name__)

#: Rate both pretrained models expect, Hz.
MODEL_RATE = 16000

#: Shortest speech (samples at 16 kHz) kept after resemblyzer's silence trimming; below it the
#: untrimmed wave is embedded instead (trimming can remove everything from noise-like audio).
_MIN_TRIMMED = 1600


def _to_model_rate(wave: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    return resample(check_wave(wave, name), int(sample_rate), MODEL_RATE)


class SpeakerEncoder:
    """resemblyzer's pretrained GE2E speaker encoder (weights inside the wheel), loaded once, on the CPU.

    Embeddings are ``(256,)`` float64 vectors, non-negative, unit L2 norm; similarities are cosines
    in [0, 1]. See :data:`SIMILARITY_CONVENTION`.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model = None
        self._preprocess = None

    def _load(self):
        if self._model is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
                warnings.filterwarnings("ignore", message=".*scipy.ndimage.morphology", category=DeprecationWarning)
                from resemblyzer import VoiceEncoder, preprocess_wav

            self._model = VoiceEncoder(device=self.device, verbose=False)
            self._preprocess = preprocess_wav
            logger.info("loaded the resemblyzer speaker encoder on %s", self.device)
        return self._model

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Utterance embedding ``(256,)`` of a mono waveform at ``sample_rate`` Hz."""
        model = self._load()
        x = _to_model_rate(wave, sample_rate, "wave").astype(np.float32)
        trimmed = self._preprocess(x)
        if trimmed.size < _MIN_TRIMMED:
            logger.warning("speaker encoder: VAD kept %d samples only; embedding the untrimmed wave", trimmed.size)
            trimmed = x
        emb = np.asarray(model.embed_utterance(trimmed), dtype=np.float64)
        norm = np.linalg.norm(emb)
        return emb / norm if norm > 0 else np.full_like(emb, np.nan)

    def embed_speaker(self, waves: Iterable[np.ndarray], sample_rate: int) -> np.ndarray:
        """Speaker embedding ``(256,)``: the L2-normalised mean of the utterance embeddings."""
        embs = [self.embed(w, sample_rate) for w in waves]
        if not embs:
            raise ValueError("embed_speaker needs at least one waveform")
        return unit(np.mean(embs, axis=0))


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to unit L2 norm (NaN if it is zero)."""
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else np.full_like(v, np.nan)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (NaN if either is zero)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(np.dot(a, b) / (na * nb))


class DnsmosScorer:
    """DNSMOS P.835 (and P.808) from ``speechmos``; the ONNX sessions are created once, on first use."""

    def __init__(self, personalized: bool = False) -> None:
        self.personalized = personalized
        self._run = None

    def __call__(self, wave: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Scores of a mono waveform at ``sample_rate`` Hz (resampled to 16 kHz, clipped to [-1, 1]).

        Returns:
            ``{"ovrl": ..., "sig": ..., "bak": ..., "p808": ...}``, MOS on a 1-5 scale.
        """
        if self._run is None:
            from speechmos import dnsmos as _dnsmos

            self._run = _dnsmos.run
        x = np.clip(_to_model_rate(wave, sample_rate, "wave"), -1.0, 1.0).astype(np.float32)
        model_type = "dnsmos_personalized" if self.personalized else "dnsmos"
        out = self._run(x, MODEL_RATE, model_type=model_type)
        return {
            "ovrl": float(out["ovrl_mos"]),
            "sig": float(out["sig_mos"]),
            "bak": float(out["bak_mos"]),
            "p808": float(out["p808_mos"]),
        }

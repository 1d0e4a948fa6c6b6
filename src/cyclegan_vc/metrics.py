"""Objective evaluation: mel-cepstral distortion, F0 error, speaker similarity, DNSMOS, baselines.

Every metric compares a *test* utterance (converted speech, or a baseline) with a *reference*
utterance of the same sentence spoken by the target speaker. The exact conventions are module
constants (:data:`MCD_CONVENTION`, :data:`F0_CONVENTION`, ...) that the report and the README quote;
:func:`conventions` collects them. In short:

- MCD (dB): SPTK mel-cepstrum (``pysptk.sp2mc``, order 24, alpha 0.42) of the raw WORLD CheapTrick
  envelope, c0 excluded, all frames, DTW (symmetric1) on c1..c24 (:func:`dtw`), averaged along the path.
- F0 RMSE (cents) and V/UV error over the same DTW path.
- Speaker similarity: cosine between resemblyzer embeddings (:class:`SpeakerEncoder`).
- Naturalness: DNSMOS P.835 overall score from ``speechmos`` (:class:`DnsmosScorer`).

The pretrained models (resemblyzer's ``pretrained.pt``, speechmos's ONNX files) ship inside their
wheels and run on the CPU, offline; :class:`Evaluator` loads them once per run and caches the
analysis of every waveform it has seen, so a reference used by several systems is analysed once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Sequence

import numpy as np
import pysptk
from scipy.spatial.distance import cdist
from tqdm import tqdm

from .audio import resample
from .features import FeatureConfig, SpectralEnvelope, analyze_envelope
from .stats import SpeakerStats, convert_f0, denormalize, normalize

__all__ = [
    "DNSMOS_CONVENTION",
    "EVAL_ALPHA",
    "EVAL_ORDER",
    "F0_CONVENTION",
    "MCD_CONVENTION",
    "METRICS",
    "SIMILARITY_CONVENTION",
    "STEP_PATTERNS",
    "VUV_CONVENTION",
    "MODEL_RATE",
    "Alignment",
    "DnsmosScorer",
    "EvalFeatures",
    "Evaluator",
    "MetricInfo",
    "SpeakerEncoder",
    "UtteranceMetrics",
    "align_mel_cepstra",
    "conventions",
    "cosine",
    "dnsmos",
    "dtw",
    "evaluate_pairs",
    "f0_rmse_cents",
    "frame_mcd",
    "mcd",
    "mean_variance_convert",
    "mel_cepstrum",
    "vuv_error",
]

logger = logging.getLogger(__name__)

#: Mel-cepstrum order (coefficients c0..c24) and all-pass constant (0.42 suits 16 kHz) of the evaluation.
EVAL_ORDER = 24
EVAL_ALPHA = 0.42

#: dB per unit of Euclidean mel-cepstral distance: 10 / ln(10) * sqrt(2).
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)

MCD_CONVENTION = (
    "MCD [dB] = 10/ln(10) * sqrt(2 * sum_{d=1..24} (c_d - c'_d)^2) per frame pair, averaged over the DTW "
    "path. Mel-cepstrum = SPTK sp2mc (pysptk) of the raw WORLD CheapTrick power envelope (not the model's "
    "coded envelope), order 24, all-pass constant alpha = 0.42, 5 ms frames at 16 kHz, F0 for CheapTrick "
    "by the run's WORLD F0 estimator (harvest by default). c0 (energy) excluded. All frames kept "
    "(silence included). Alignment: DTW between reference (real target) and test, Euclidean distance on "
    "c1..c24, symmetric step pattern symmetric1 (D[i,j] = d[i,j] + min(D[i-1,j-1], D[i-1,j], D[i,j-1]), "
    "as fastdtw and nnmnkwii use), no band. Frames averaged along the alignment path, each path pair "
    "counted once."
)
F0_CONVENTION = (
    "F0 RMSE [cents] = sqrt(mean((1200 * log2(f0_test / f0_ref))^2)) over DTW-path frame pairs voiced "
    "in both (the MCD path); F0 by the run's WORLD estimator (harvest by default), 5 ms frames; "
    "undefined (NaN) when no pair is voiced in both."
)
VUV_CONVENTION = (
    "V/UV error = fraction of DTW-path frame pairs whose voicing decision (F0 > 0) differs between "
    "reference and test."
)
SIMILARITY_CONVENTION = (
    "Speaker similarity = cosine between resemblyzer (GE2E, 256-d) embeddings. The test utterance is "
    "embedded alone (resemblyzer preprocessing: volume normalised to -30 dBFS, long silences trimmed by "
    "WebRTC VAD, 1.6 s partials at 1.3 per second, L2-normalised mean). sim_to_target compares it with "
    "the target speaker's embedding (L2-normalised mean of the embeddings of the target's reference "
    "utterances, which should be training utterances, not the evaluated sentences); sim_to_source does "
    "the same with the source speaker's references."
)
DNSMOS_CONVENTION = (
    "Naturalness = DNSMOS P.835 overall score (speechmos, non-personalised sig_bak_ovr.onnx with its "
    "polynomial mapping; SIG, BAK and P.808 also recorded) of the test utterance at 16 kHz, clipped to "
    "[-1, 1]; clips shorter than 9.01 s are tiled to that length by speechmos. Scale 1-5, higher is better."
)


def conventions(config: FeatureConfig | None = None) -> dict[str, str]:
    """The convention strings a report quotes, keyed by metric; with ``config``, the analysis settings too."""
    out = {
        "MCD": MCD_CONVENTION,
        "F0 RMSE": F0_CONVENTION,
        "V/UV error": VUV_CONVENTION,
        "Speaker similarity": SIMILARITY_CONVENTION,
        "DNSMOS": DNSMOS_CONVENTION,
    }
    if config is not None:
        out["Analysis"] = (
            f"WORLD at {config.sample_rate} Hz, {config.frame_period:g} ms frames, F0 by {config.f0_method} "
            f"({config.f0_floor:g}-{config.f0_ceil:g} Hz), CheapTrick FFT size {config.fft_size}."
        )
    return out


# --------------------------------------------------------------------------------------------------
# Mel-cepstrum and DTW
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalFeatures:
    """What the objective metrics need from one utterance.

    Attributes:
        f0: ``(T,)`` float64 F0 in Hz, 0 on unvoiced frames.
        mc: ``(T, order + 1)`` float64 SPTK mel-cepstrum c0..c_order of the CheapTrick envelope.
    """

    f0: np.ndarray
    mc: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.f0.shape[0])


def _check_wave(wave: np.ndarray, name: str = "wave") -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"{name}: expected a mono waveform of shape (samples,), got shape {wave.shape}")
    if wave.size == 0:
        raise ValueError(f"{name}: empty waveform")
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{name}: {int(np.count_nonzero(~np.isfinite(wave)))} non-finite sample(s)")
    return wave


def mel_cepstrum(
    wave: np.ndarray,
    sample_rate: int,
    config: FeatureConfig = FeatureConfig(),
    order: int = EVAL_ORDER,
    alpha: float = EVAL_ALPHA,
    envelope: SpectralEnvelope | None = None,
) -> EvalFeatures:
    """The evaluation mel-cepstrum (and F0) of a mono waveform.

    WORLD analysis (F0 by ``config.f0_method``, CheapTrick envelope, ``config.frame_period`` ms frames)
    through :func:`cyclegan_vc.features.analyze_envelope`, then ``pysptk.sp2mc(sp, order, alpha)`` of
    the raw power envelope. The wave is resampled to ``config.sample_rate`` first if needed.

    Args:
        wave: ``(samples,)`` waveform, nominally in [-1, 1].
        sample_rate: rate of ``wave`` in Hz.
        config: WORLD analysis settings.
        order: mel-cepstrum order; the result has ``order + 1`` coefficients (c0 included).
        alpha: all-pass (frequency warping) constant.
        envelope: :func:`~cyclegan_vc.features.analyze_envelope` of this same waveform (at
            ``config.sample_rate``) to reuse instead of analysing it again.

    Returns:
        :class:`EvalFeatures` with ``f0`` ``(T,)`` Hz and ``mc`` ``(T, order + 1)``.
    """
    wave = resample(_check_wave(wave), int(sample_rate), config.sample_rate)
    env = envelope if envelope is not None else analyze_envelope(wave, config)
    mc = pysptk.sp2mc(np.ascontiguousarray(env.sp, dtype=np.float64), order=order, alpha=alpha)
    return EvalFeatures(f0=np.asarray(env.f0, dtype=np.float64), mc=np.asarray(mc, dtype=np.float64))


@dataclass(frozen=True)
class Alignment:
    """A DTW alignment.

    Attributes:
        path: ``(L, 2)`` int64 pairs ``(reference frame, test frame)``, both non-decreasing, from
            ``(0, 0)`` to ``(N - 1, M - 1)``.
        cost: accumulated step-weighted distance, divided by ``N + M`` (symmetric2) or by the path
            length (symmetric1).
    """

    path: np.ndarray
    cost: float


# Step codes of the backtracking table.
_DIAG, _UP, _LEFT = 0, 1, 2

#: Weight of the diagonal step of each supported step pattern (horizontal and vertical weigh 1).
STEP_PATTERNS = {"symmetric2": 2.0, "symmetric1": 1.0}


def dtw(x: np.ndarray, y: np.ndarray, *, band: int | None = None, step_pattern: str = "symmetric1") -> Alignment:
    """Dynamic time warping of two feature sequences with Euclidean frame distance.

    Step pattern ``"symmetric1"`` (the default, as fastdtw and nnmnkwii use):
    ``D[i, j] = d + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` with ``d = ||x_i - y_j||``; it favours
    diagonal paths. ``"symmetric2"`` (Sakoe & Chiba's symmetric form) weighs the diagonal step 2,
    so every path has total weight ``N + M``; on VCC 2016 it lets the path wander more in silence
    and gives MCDs about 0.5-0.7 dB lower between different speakers (about 0.03 dB lower for
    WORLD resynthesis). Both are symmetric: ``dtw(y, x)`` gives the transposed path. Ties prefer the diagonal step, then
    the step in ``x``. The cost matrix is computed at once (scipy ``cdist``); the recursion runs over
    anti-diagonals, vectorised, so 1000 x 1000 frames take a fraction of a second.

    Args:
        x: ``(N, D)`` reference sequence.
        y: ``(M, D)`` test sequence.
        band: optional Sakoe-Chiba band half-width in frames around the length-scaled diagonal
            (cells with ``|i - j * (N - 1) / (M - 1)| > band`` are forbidden); ``None`` = no band.
        step_pattern: ``"symmetric2"`` or ``"symmetric1"``.

    Returns:
        :class:`Alignment` with the optimal path and its normalised cost.
    """
    if step_pattern not in STEP_PATTERNS:
        raise ValueError(f"step_pattern must be one of {sorted(STEP_PATTERNS)}, got {step_pattern!r}")
    diag_weight = STEP_PATTERNS[step_pattern]
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"dtw needs (N, D) and (M, D) arrays, got shapes {x.shape} and {y.shape}")
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"dtw needs non-empty sequences, got {n} and {m} frames")
    dist = cdist(x, y, metric="euclidean")
    if band is not None:
        if band < 1:
            raise ValueError(f"band must be at least 1 frame, got {band}")
        ii = np.arange(n)[:, None]
        jj = np.arange(m)[None, :] * ((n - 1) / (m - 1) if m > 1 else 0.0)
        dist = np.where(np.abs(ii - jj) <= band, dist, np.inf)

    # acc is (n + 1, m + 1) with an infinite border row/column and acc[0, 0] = 0; flat indexing.
    width = m + 1
    acc = np.full((n + 1) * width, np.inf)
    acc[0] = 0.0
    steps = np.zeros(n * m, dtype=np.int8)
    flat_dist = dist.ravel()
    for k in range(2, n + m + 1):  # k = i + j in 1-based cell coordinates
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        here = i * width + j
        d = flat_dist[(i - 1) * m + (j - 1)]
        candidates = np.stack(
            (acc[here - width - 1] + diag_weight * d, acc[here - width] + d, acc[here - 1] + d)
        )
        choice = np.argmin(candidates, axis=0)
        acc[here] = candidates[choice, np.arange(i.size)]
        steps[(i - 1) * m + (j - 1)] = choice
    total = float(acc[-1])
    if not np.isfinite(total):
        raise ValueError(f"no DTW path within band {band} for {n} x {m} frames; widen the band")

    path = []
    i, j = n - 1, m - 1
    while True:
        path.append((i, j))
        if i == 0 and j == 0:
            break
        step = steps[i * m + j]
        if step == _DIAG:
            i, j = i - 1, j - 1
        elif step == _UP:
            i -= 1
        else:
            j -= 1
    path_arr = np.asarray(path[::-1], dtype=np.int64)
    norm = (n + m) if step_pattern == "symmetric2" else path_arr.shape[0]
    return Alignment(path=path_arr, cost=total / norm)


def _check_mc(mc: np.ndarray, name: str) -> np.ndarray:
    mc = np.asarray(mc, dtype=np.float64)
    if mc.ndim != 2 or mc.shape[1] < 2 or mc.shape[0] == 0:
        raise ValueError(f"{name}: expected a (frames, order + 1) mel-cepstrum with order >= 1, got {mc.shape}")
    return mc


def _pairs(n_ref: int, n_test: int, path: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Frame index pairs: the DTW path, or the identity when ``path`` is None (lengths must match)."""
    if path is None:
        if n_ref != n_test:
            raise ValueError(f"unaligned sequences need equal frame counts, got {n_ref} and {n_test}; pass a path")
        idx = np.arange(n_ref)
        return idx, idx
    path = np.asarray(path)
    if path.ndim != 2 or path.shape[1] != 2 or path.shape[0] == 0:
        raise ValueError(f"path must have shape (L, 2), got {path.shape}")
    if path[:, 0].max() >= n_ref or path[:, 1].max() >= n_test or path.min() < 0:
        raise ValueError(f"path indexes beyond the sequences ({n_ref} and {n_test} frames)")
    return path[:, 0], path[:, 1]


def align_mel_cepstra(
    mc_ref: np.ndarray, mc_test: np.ndarray, *, band: int | None = None, step_pattern: str = "symmetric1"
) -> Alignment:
    """DTW alignment of two mel-cepstra on c1..c_order (c0 ignored), as :data:`MCD_CONVENTION` states."""
    mc_ref = _check_mc(mc_ref, "mc_ref")
    mc_test = _check_mc(mc_test, "mc_test")
    return dtw(mc_ref[:, 1:], mc_test[:, 1:], band=band, step_pattern=step_pattern)


def frame_mcd(mc_ref: np.ndarray, mc_test: np.ndarray) -> np.ndarray:
    """Per-frame MCD in dB of two equally long ``(T, order + 1)`` mel-cepstra, c0 excluded: ``(T,)``."""
    diff = _check_mc(mc_ref, "mc_ref")[:, 1:] - _check_mc(mc_test, "mc_test")[:, 1:]
    return _MCD_SCALE * np.sqrt(np.sum(diff * diff, axis=1))


def mcd(
    mc_ref: np.ndarray,
    mc_test: np.ndarray,
    *,
    align: bool = True,
    path: np.ndarray | None = None,
    band: int | None = None,
    step_pattern: str = "symmetric1",
) -> float:
    """Mel-cepstral distortion in dB, as :data:`MCD_CONVENTION` states.

    ``10 / ln 10 * sqrt(2 * sum_{d=1..order} (c_d - c'_d)^2)`` per frame pair (c0 excluded), averaged
    over the frame pairs of the DTW path on c1..c_order.

    Args:
        mc_ref: ``(N, order + 1)`` reference mel-cepstrum (real target speech).
        mc_test: ``(M, order + 1)`` test mel-cepstrum (converted speech).
        align: compute the DTW path; if False the frames are compared one to one (N == M needed).
        path: a precomputed ``(L, 2)`` path (e.g. ``Alignment.path``); overrides ``align``.
        band: Sakoe-Chiba band for the DTW (frames), ``None`` = none.
        step_pattern: DTW step pattern (:func:`dtw`).

    Returns:
        Mean MCD in dB (0 for identical inputs).
    """
    mc_ref = _check_mc(mc_ref, "mc_ref")
    mc_test = _check_mc(mc_test, "mc_test")
    if mc_ref.shape[1] != mc_test.shape[1]:
        raise ValueError(f"mel-cepstra have different orders: {mc_ref.shape[1]} and {mc_test.shape[1]} coefficients")
    if path is None and align:
        path = dtw(mc_ref[:, 1:], mc_test[:, 1:], band=band, step_pattern=step_pattern).path
    ri, ti = _pairs(mc_ref.shape[0], mc_test.shape[0], path)
    return float(np.mean(frame_mcd(mc_ref[ri], mc_test[ti])))


def _check_f0(f0: np.ndarray, name: str) -> np.ndarray:
    f0 = np.asarray(f0, dtype=np.float64)
    if f0.ndim != 1 or f0.size == 0:
        raise ValueError(f"{name}: expected a non-empty (frames,) F0 contour, got shape {f0.shape}")
    if np.any(f0 < 0) or not np.all(np.isfinite(f0)):
        raise ValueError(f"{name}: F0 must be finite and >= 0 Hz (0 = unvoiced)")
    return f0


def f0_rmse_cents(f0_ref: np.ndarray, f0_test: np.ndarray, path: np.ndarray | None = None) -> float:
    """RMSE in cents of ``1200 * log2(f0_test / f0_ref)`` over frame pairs voiced in both.

    Args:
        f0_ref: ``(N,)`` reference F0 in Hz (0 = unvoiced).
        f0_test: ``(M,)`` test F0 in Hz.
        path: ``(L, 2)`` DTW path; ``None`` compares frames one to one (N == M needed).

    Returns:
        RMSE in cents, or NaN when no pair is voiced in both.
    """
    f0_ref = _check_f0(f0_ref, "f0_ref")
    f0_test = _check_f0(f0_test, "f0_test")
    ri, ti = _pairs(f0_ref.size, f0_test.size, path)
    a, b = f0_ref[ri], f0_test[ti]
    both = (a > 0) & (b > 0)
    if not np.any(both):
        return float("nan")
    cents = 1200.0 * np.log2(b[both] / a[both])
    return float(np.sqrt(np.mean(cents * cents)))


def vuv_error(f0_ref: np.ndarray, f0_test: np.ndarray, path: np.ndarray | None = None) -> float:
    """Fraction (0-1) of frame pairs whose voicing (F0 > 0) differs; pairs from ``path`` or one to one."""
    f0_ref = _check_f0(f0_ref, "f0_ref")
    f0_test = _check_f0(f0_test, "f0_test")
    ri, ti = _pairs(f0_ref.size, f0_test.size, path)
    return float(np.mean((f0_ref[ri] > 0) != (f0_test[ti] > 0)))


# --------------------------------------------------------------------------------------------------
# Pretrained models: speaker encoder and DNSMOS
# --------------------------------------------------------------------------------------------------

#: Rate both pretrained models expect, Hz.
MODEL_RATE = 16000

#: Shortest speech (samples at 16 kHz) kept after resemblyzer's silence trimming; below it the
#: untrimmed wave is embedded instead (trimming can remove everything from noise-like audio).
_MIN_TRIMMED = 1600


def _to_model_rate(wave: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    return resample(_check_wave(wave, name), int(sample_rate), MODEL_RATE)


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
        return _unit(np.mean(embs, axis=0))

    def similarity(self, wave_a: np.ndarray, wave_b: np.ndarray, sample_rate: int) -> float:
        """Cosine similarity of the utterance embeddings of two waveforms at ``sample_rate`` Hz."""
        return cosine(self.embed(wave_a, sample_rate), self.embed(wave_b, sample_rate))


def _unit(v: np.ndarray) -> np.ndarray:
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


_default_dnsmos: DnsmosScorer | None = None


def dnsmos(wave: np.ndarray, sample_rate: int) -> dict[str, float]:
    """DNSMOS scores ``{"ovrl", "sig", "bak", "p808"}`` of a waveform (one shared scorer per process)."""
    global _default_dnsmos
    if _default_dnsmos is None:
        _default_dnsmos = DnsmosScorer()
    return _default_dnsmos(wave, sample_rate)


# --------------------------------------------------------------------------------------------------
# Baseline
# --------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class MetricInfo:
    """How a per-utterance metric is named, shown and read."""

    key: str
    label: str
    unit: str
    lower_is_better: bool
    digits: int


#: The metrics every report shows, in display order.
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("mcd_db", "MCD", "dB", True, 2),
    MetricInfo("f0_rmse_cents", "F0 RMSE", "cents", True, 1),
    MetricInfo("vuv_error", "V/UV error", "%", True, 1),
    MetricInfo("sim_to_target", "Sim. to target", "cos", False, 3),
    MetricInfo("sim_to_source", "Sim. to source", "cos", True, 3),
    MetricInfo("dnsmos_ovrl", "DNSMOS OVRL", "MOS", False, 2),
)


@dataclass
class UtteranceMetrics:
    """Objective scores of one test utterance against the real target utterance of the same sentence.

    ``mcd_db`` in dB, ``f0_rmse_cents`` in cents, ``vuv_error`` a fraction in [0, 1], similarities are
    cosines, DNSMOS scores MOS (1-5). NaN where a metric was not computed or is undefined.
    """

    id: str
    mcd_db: float
    f0_rmse_cents: float
    vuv_error: float
    sim_to_target: float
    sim_to_source: float
    dnsmos_ovrl: float
    dnsmos_sig: float = float("nan")
    dnsmos_bak: float = float("nan")
    dnsmos_p808: float = float("nan")
    ref_frames: int = 0
    test_frames: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "UtteranceMetrics":
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown utterance metric field(s): {sorted(unknown)}")
        values = {}
        for name, value in data.items():
            if name == "id":
                values[name] = str(value)
            elif name in ("ref_frames", "test_frames"):
                values[name] = int(value)
            else:
                values[name] = float("nan") if value is None else float(value)
        return cls(**values)


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
        return _unit(np.mean([self.embedding(w, sample_rate) for w in waves], axis=0))

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


def evaluate_pairs(
    pairs: Iterable[Sequence],
    target_refs: Sequence[np.ndarray] = (),
    source_refs: Sequence[np.ndarray] = (),
    *,
    sample_rate: int | None = None,
    config: FeatureConfig = FeatureConfig(),
    evaluator: Evaluator | None = None,
    desc: str = "evaluate",
    progress: bool = True,
) -> list[UtteranceMetrics]:
    """Per-utterance metrics of ``(id, source_wave, converted_wave, target_wave)`` pairs (one direction).

    A convenience around :meth:`Evaluator.evaluate_pairs`; pass one ``evaluator`` to every call of a run
    so the models load once and the references are analysed once.
    """
    evaluator = evaluator or Evaluator(config)
    return evaluator.evaluate_pairs(
        pairs, target_refs=target_refs, source_refs=source_refs, sample_rate=sample_rate, desc=desc, progress=progress
    )

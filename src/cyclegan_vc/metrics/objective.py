"""Objective metrics of a converted utterance against the real one: mel-cepstral distortion, F0 error, voicing.

Every metric compares a *test* utterance (converted speech, or a baseline) with a *reference*
utterance of the same sentence spoken by the target speaker. The exact conventions are module
constants (:data:`MCD_CONVENTION`, :data:`F0_CONVENTION`, ...) that the report and the docs quote;
:func:`conventions` collects them. In short:

- MCD (dB): SPTK mel-cepstrum (``pysptk.sp2mc``, order 24, alpha 0.42) of the raw WORLD CheapTrick
  envelope, c0 excluded, all frames, DTW (symmetric1) on c1..c24 (:func:`dtw`), averaged along the path.
- F0 RMSE (cents) and V/UV error over the same DTW path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pysptk
from librosa.sequence import dtw as _librosa_dtw
from scipy.spatial.distance import cdist

from ..audio import resample
from ..features import FeatureConfig, SpectralEnvelope, analyze_envelope

__all__ = [
    "DNSMOS_CONVENTION",
    "EVAL_ALPHA",
    "EVAL_ORDER",
    "F0_CONVENTION",
    "MCD_CONVENTION",
    "SIMILARITY_CONVENTION",
    "STEP_PATTERNS",
    "VUV_CONVENTION",
    "Alignment",
    "EvalFeatures",
    "align_mel_cepstra",
    "check_wave",
    "conventions",
    "dtw",
    "f0_rmse_cents",
    "frame_mcd",
    "mcd",
    "mel_cepstrum",
    "vuv_error",
]

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


def check_wave(wave: np.ndarray, name: str = "wave") -> np.ndarray:
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
    wave = resample(check_wave(wave), int(sample_rate), config.sample_rate)
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


#: Weight of the diagonal step of each supported step pattern (horizontal and vertical weigh 1).
STEP_PATTERNS = {"symmetric2": 2.0, "symmetric1": 1.0}


def dtw(x: np.ndarray, y: np.ndarray, *, band: int | None = None, step_pattern: str = "symmetric1") -> Alignment:
    """Dynamic time warping of two feature sequences with Euclidean frame distance.

    Step pattern ``"symmetric1"`` (the default, as fastdtw and nnmnkwii use):
    ``D[i, j] = d + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` with ``d = ||x_i - y_j||``; it favours
    diagonal paths. ``"symmetric2"`` (Sakoe & Chiba's symmetric form) weighs the diagonal step 2, so
    every path has total weight ``N + M``; it lets the path wander more in silence and gives lower
    MCDs between different speakers (docs/evaluation.md). Both are symmetric: ``dtw(y, x)`` gives the
    transposed path. The cost matrix is scipy's ``cdist``; the recursion and the backtracking are
    librosa's (``librosa.sequence.dtw``, compiled by numba).

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
    weights = np.array([STEP_PATTERNS[step_pattern], 1.0, 1.0])  # librosa's steps: (1, 1), (0, 1), (1, 0)
    acc, path = _librosa_dtw(C=dist, weights_mul=weights, backtrack=True)
    total = float(acc[-1, -1])
    if not np.isfinite(total):
        raise ValueError(f"no DTW path within band {band} for {n} x {m} frames; widen the band")
    path = np.ascontiguousarray(path[::-1], dtype=np.int64)
    norm = (n + m) if step_pattern == "symmetric2" else path.shape[0]
    return Alignment(path=path, cost=total / norm)


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


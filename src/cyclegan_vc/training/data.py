"""Training data in memory: prepared utterances, random crops, filling-in-frames masks and RNG state.

- :class:`TrainingData`: the normalised training mel-cepstra, statistics, feature settings and held-out
  parallel pairs of a prepared-data directory;
- :class:`CropSampler`: random fixed-length crops per speaker from its own seeded generator;
- :class:`MaskSampler`: the temporal masks of filling in frames (MaskCycleGAN-VC), from its own seeded
  generator;
- :func:`rng_state` / :func:`set_rng_state`: the global Python, NumPy and torch generators as plain
  tensors and numbers, for the training state.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..features import FeatureConfig
from ..stats import SpeakerStats, normalize

__all__ = ["CropSampler", "EvalUtterance", "MaskSampler", "TrainingData", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)


@dataclass
class EvalUtterance:
    """One held-out utterance: cached features (``f0`` (T,) Hz, raw ``mcep`` (T, D), ``ap_coded``
    (T, bands)) and the path of its recording (``None`` if unknown)."""

    id: str
    f0: np.ndarray
    mcep: np.ndarray
    ap_coded: np.ndarray
    audio: str | None = None


@dataclass
class TrainingData:
    """Everything training needs from the prepared data, in memory.

    Attributes:
        mceps: role (``"A"``, ``"B"``) -> training utterances as ``(D, T)`` float32 MCEPs normalised
            with that speaker's own statistics.
        stats: role -> :class:`SpeakerStats` (training split).
        features: the feature settings of the prepared data.
        ids: role -> utterance ids, parallel to ``mceps`` (for messages).
        speakers: role -> speaker name.
        eval_pairs: ``(A, B)`` held-out utterances of the same sentence (parallel), possibly empty.
    """

    mceps: dict[str, list[np.ndarray]]
    stats: dict[str, SpeakerStats]
    features: FeatureConfig = field(default_factory=FeatureConfig)
    ids: dict[str, list[str]] = field(default_factory=dict)
    speakers: dict[str, str] = field(default_factory=lambda: {"A": "A", "B": "B"})
    eval_pairs: list[tuple[EvalUtterance, EvalUtterance]] = field(default_factory=list)

    @property
    def feature_dim(self) -> int:
        """The mel-cepstrum dimension ``D``: what the networks take (the generator's channels, the
        discriminator's height)."""
        return int(self.stats["A"].mcep_mean.shape[0])

    @classmethod
    def from_prepared(cls, prepared_dir: str | os.PathLike, eval_pairs: int = 2) -> "TrainingData":
        """Load a prepared-data directory: all training utterances, the first ``eval_pairs`` parallel
        eval pairs (sorted by id)."""
        from ..prepare import feature_config, load_features, load_manifest, load_stats

        prepared_dir = Path(prepared_dir)
        manifest = load_manifest(prepared_dir)
        stats = load_stats(prepared_dir)
        features = feature_config(prepared_dir)
        speakers = manifest["speakers"]
        mceps: dict[str, list[np.ndarray]] = {}
        ids: dict[str, list[str]] = {}
        for role in ("A", "B"):
            mceps[role], ids[role] = [], []
            for entry in speakers[role]["train"]:
                mcep = _checked_mcep(load_features(prepared_dir, entry), prepared_dir / entry["features"], stats[role])
                mceps[role].append(np.ascontiguousarray(normalize(mcep, stats[role]).T, dtype=np.float32))
                ids[role].append(entry["id"])
        by_id = {role: {e["id"]: e for e in speakers[role].get("eval", [])} for role in ("A", "B")}
        common = sorted(set(by_id["A"]) & set(by_id["B"]))
        pairs = []
        for uid in common[:eval_pairs]:
            pair = []
            for role in ("A", "B"):
                entry = by_id[role][uid]
                arrays = load_features(prepared_dir, entry)
                mcep = _checked_mcep(arrays, prepared_dir / entry["features"], stats[role])
                pair.append(EvalUtterance(uid, arrays["f0"], mcep, arrays["ap_coded"], entry.get("audio")))
            pairs.append((pair[0], pair[1]))
        if not common and (by_id["A"] or by_id["B"]):
            log.warning("%s: no eval utterance id is shared by A and B; validating by cycle error instead", prepared_dir)
        return cls(
            mceps=mceps,
            stats=stats,
            features=features,
            ids=ids,
            speakers={role: speakers[role].get("name", role) for role in ("A", "B")},
            eval_pairs=pairs,
        )


def _checked_mcep(arrays: dict[str, np.ndarray], path: Path, stats: SpeakerStats) -> np.ndarray:
    mcep = arrays.get("mcep")
    if mcep is None or mcep.ndim != 2 or mcep.shape[1] != stats.mcep_mean.shape[0]:
        shape = None if mcep is None else mcep.shape
        raise ValueError(f"{path}: expected 'mcep' of shape (frames, {stats.mcep_mean.shape[0]}), got {shape}")
    if not np.all(np.isfinite(mcep)):
        raise ValueError(f"{path}: 'mcep' holds non-finite values")
    return np.asarray(mcep, dtype=np.float64)


class CropSampler:
    """Random fixed-length crops of in-memory utterances, with its own seeded generator.

    Each call of :meth:`sample` picks ``batch_size`` utterances of one speaker uniformly at random and
    a uniformly random start in each. Utterances shorter than a crop are padded by mirroring
    (``"pad"``) or left out (``"skip"``), with one warning per speaker; a speaker left with nothing
    raises ``ValueError``.

    Args:
        mceps: role -> ``(D, T)`` float32 arrays.
        crop_frames: frames per crop.
        batch_size: crops per call.
        seed: seed of the sampler's ``torch.Generator`` (its state is part of the training state).
        short_utterances: ``"pad"`` or ``"skip"``.
        ids: role -> utterance ids for the warning.
    """

    def __init__(
        self,
        mceps: dict[str, list[np.ndarray]],
        crop_frames: int,
        batch_size: int,
        seed: int,
        short_utterances: str = "pad",
        ids: dict[str, list[str]] | None = None,
    ) -> None:
        if short_utterances not in ("pad", "skip"):
            raise ValueError(f"short_utterances must be 'pad' or 'skip', got {short_utterances!r}")
        self.crop_frames = crop_frames
        self.batch_size = batch_size
        self.pools: dict[str, list[torch.Tensor]] = {}
        for role, arrays in mceps.items():
            names = (ids or {}).get(role) or [str(k) for k in range(len(arrays))]
            pool, short, empty = [], [], []
            for name, array in zip(names, arrays):
                frames = array.shape[1]
                if frames == 0:
                    empty.append(name)
                    continue
                if frames < crop_frames:
                    short.append(f"{name} ({frames})")
                    if short_utterances == "skip":
                        continue
                    array = np.pad(array, ((0, 0), (0, crop_frames - frames)), mode="symmetric")
                pool.append(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
            if empty:
                log.warning("speaker %s: skipped %d empty utterance(s): %s", role, len(empty), ", ".join(empty[:10]))
            if short:
                action = "padded by mirroring" if short_utterances == "pad" else "skipped"
                log.warning(
                    "speaker %s: %d utterance(s) shorter than the %d-frame crop were %s: %s%s",
                    role, len(short), crop_frames, action, ", ".join(short[:10]), " ..." if len(short) > 10 else "",
                )
            if not pool:
                raise ValueError(
                    f"speaker {role}: no training utterance has {crop_frames} frames or more "
                    f"(set training.short_utterances=pad or a smaller training.crop_frames)"
                )
            self.pools[role] = pool
        self.generator = torch.Generator().manual_seed(int(seed))

    def sample(self, role: str) -> torch.Tensor:
        """``(batch_size, D, crop_frames)`` float32 crops of speaker ``role``."""
        pool = self.pools[role]
        picks = torch.randint(len(pool), (self.batch_size,), generator=self.generator).tolist()
        crops = []
        for k in picks:
            utterance = pool[k]
            start = int(torch.randint(utterance.shape[1] - self.crop_frames + 1, (1,), generator=self.generator))
            crops.append(utterance[:, start : start + self.crop_frames])
        return torch.stack(crops)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"].to("cpu", torch.uint8))


class MaskSampler:
    """Temporal masks of filling in frames (FIF, MaskCycleGAN-VC), with their own seeded generator.

    Each mask is ones with one run of ``L`` consecutive zero frames, ``L`` uniform in
    ``0..max_frames`` (both ends included) and its start uniform among the ``frames - L + 1`` places
    it fits. The generator is seeded from ``seed`` apart from the crop sampler's (an independent
    stream), and its state is part of the training state, so a resumed run draws the same masks.

    Args:
        max_frames: the longest run of zeroed frames (``training.mask_frames``), ``>= 0``.
        seed: the training seed.
    """

    def __init__(self, max_frames: int, seed: int) -> None:
        if max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self.max_frames = int(max_frames)
        stream = np.random.SeedSequence([int(seed), 0x6D61736B])  # "mask": a stream apart from the crops'
        self.generator = torch.Generator().manual_seed(int(stream.generate_state(1, np.uint64)[0]))

    def sample(self, batch: int, frames: int) -> torch.Tensor:
        """``(batch, 1, frames)`` float32 masks (1 = kept frame, 0 = frame to fill in)."""
        if self.max_frames >= frames:
            raise ValueError(f"a run of up to {self.max_frames} masked frames does not fit a {frames}-frame crop")
        masks = torch.ones(batch, 1, frames)
        lengths = torch.randint(self.max_frames + 1, (batch,), generator=self.generator).tolist()
        for k, length in enumerate(lengths):
            start = int(torch.randint(frames - length + 1, (1,), generator=self.generator))
            masks[k, 0, start : start + length] = 0.0
        return masks

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"].to("cpu", torch.uint8))


def rng_state() -> dict[str, Any]:
    """The global Python, NumPy, torch (and CUDA) generators' states as tensors and numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (the CUDA states only on a machine with as many GPUs)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in cuda])

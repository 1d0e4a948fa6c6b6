"""Training CycleGAN-VC: crop sampling, the :class:`Trainer` and the ``train`` stage.

Run directory written by :func:`train`::

    RUN/config.yaml                          resolved config + package_version (loads with load_config)
    RUN/checkpoints/state_latest.safetensors full training state (exact resume)
    RUN/checkpoints/state_00100000.safetensors  milestone copies (training.milestone_interval)
    RUN/model_latest.safetensors             exported conversion model, latest weights
    RUN/model_best.safetensors               exported conversion model with the best validation score
    RUN/validation.json                      every validation: step and metrics
    RUN/data.json                            {"prepared": absolute path of the prepared-data directory}
    RUN/samples/step_00005000/A2B_<id>.wav   converted held-out utterances
    RUN/tensorboard/                         scalars (losses, learning rates, validation) and audio

One iteration (:meth:`Trainer.train_step`), with ``x`` a batch of crops of speaker A and ``y`` of B,
drawn independently (normalised MCEPs, ``(N, D, crop_frames)``):

1. generators: ``fake_b = G_ab(x)``, ``fake_a = G_ba(y)``, cycles ``G_ba(fake_b)``, ``G_ab(fake_a)``,
   identities ``G_ba(x)``, ``G_ab(y)`` while ``step < identity_steps``; the loss in
   :mod:`cyclegan_vc.losses`; one Adam step each for ``G_ab`` and ``G_ba`` (the discriminators'
   parameters are frozen during this backward pass, so they get no gradient from it);
2. discriminators: least-squares loss on ``(x, fake_a)`` for ``D_a`` and ``(y, fake_b)`` for ``D_b``
   with the fakes of step 1 detached; one Adam step each for ``D_a`` and ``D_b``;
3. with ``training.generator_ema > 0`` (a named deviation; 0, the paper, by default), each
   generator's weight average moves towards its new weights: ``ema = decay * ema + (1 - decay) * w``;
   the averages, not the trained weights, are then what validation scores and the exported models hold;
4. ``step += 1`` and every optimiser's learning rate is set to its own base rate times
   :func:`lr_factor` of the new step.

Validation converts held-out utterances (the prepared ``eval`` entries with the same id for A and B)
in both directions: generator MCEPs, log-Gaussian F0 transform, the source's cached aperiodicity,
WORLD synthesis. The score is the mel-cepstral distortion of :func:`cyclegan_vc.metrics.mcd` (SPTK
mel-cepstra of the synthesised waveform against those of the real target recording of the same
sentence, DTW; see ``metrics.MCD_CONVENTION``), averaged over both directions. Without eval data, the
score is the cycle reconstruction error (L1 on normalised MCEPs) of whole training utterances. The
best-scoring model (lowest) is kept as ``model_best``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .audio import AudioError, load_audio, save_audio
from .checkpoint import (
    MODEL_BEST,
    MODEL_LATEST,
    STATE_KIND,
    CheckpointError,
    copy_checkpoint,
    export_model,
    load_checkpoint,
    read_metadata,
    require_keys,
    save_checkpoint,
)
from .config import Config, ConfigError, apply_overrides, config_from_dict, read_preset, save_config
from .features import FeatureConfig, WorldFeatures, decode_aperiodicity, synthesize
from .losses import l1, lsgan_discriminator, lsgan_generator
from .models import WeightGradientSink, build_discriminator, build_generator, gemm_convolutions
from .stats import SpeakerStats, convert_f0, denormalize, normalize
from .utils import atomic_write_json, read_json

__all__ = [
    "ROLES",
    "CropSampler",
    "EvalUtterance",
    "TrainSummary",
    "Trainer",
    "TrainingData",
    "cpu_has_native_bf16",
    "lr_factor",
    "reference_train_step",
    "resolve_device",
    "train",
]

log = logging.getLogger(__name__)

ROLES = ("G_ab", "G_ba", "D_a", "D_b")
DIRECTIONS = {"A2B": ("A", "B", "G_ab"), "B2A": ("B", "A", "G_ba")}
STATE_LATEST = "state_latest.safetensors"


def lr_factor(step: int, decay_start: int, total: int) -> float:
    """Learning-rate multiplier after ``step`` completed iterations.

    1 while ``step < decay_start``, then linear to 0 at ``step == total``:
    ``(total - step) / (total - decay_start)``; always 1 when ``total <= decay_start``.
    """
    if total <= decay_start or step <= decay_start:
        return 1.0
    return max(0.0, (total - step) / (total - decay_start))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products natively (AVX512-BF16 or AMX, as oneDNN reports it);
    False where this torch build cannot tell."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return resolved


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


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
        return int(self.stats["A"].mcep_mean.shape[0])

    @classmethod
    def from_prepared(cls, prepared_dir: str | os.PathLike, eval_pairs: int = 2) -> "TrainingData":
        """Load a prepared-data directory: all training utterances, the first ``eval_pairs`` parallel
        eval pairs (sorted by id)."""
        from .prepare import feature_config, load_features, load_manifest, load_stats

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


# --------------------------------------------------------------------------------------------------
# RNG state as plain tensors and numbers
# --------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any]) -> None:
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


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    """Networks, optimisers and the schedule of one CycleGAN-VC training, keyed by role.

    ``networks`` and ``optimizers`` are dicts over :data:`ROLES` (``G_ab``: A->B, ``G_ba``: B->A,
    ``D_a``, ``D_b``); each network has its own Adam optimiser with its own learning rate and betas.
    Weights are initialised from ``training.seed`` without touching the global RNG.

    Args:
        config: the training configuration.
        data: training data; needed for :meth:`train_step` without explicit batches, for
            :meth:`validate` and :meth:`export`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

    Attributes:
        calls: by role, what :meth:`train_step` calls: the network itself, or its ``torch.compile``
            wrapper (same parameters) with ``training.compile``.
    """

    def __init__(self, config: Config, data: TrainingData | None = None, device: str | torch.device = "cpu") -> None:
        self.config = config.validate()
        self.device = resolve_device(device)
        t, m = config.training, config.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            self.networks: dict[str, nn.Module] = {
                "G_ab": build_generator(m.generator, **m.generator_kwargs),
                "G_ba": build_generator(m.generator, **m.generator_kwargs),
                "D_a": build_discriminator(m.discriminator, **m.discriminator_kwargs),
                "D_b": build_discriminator(m.discriminator, **m.discriminator_kwargs),
            }
        for net in self.networks.values():
            net.to(self.device).train()
        # training.generator_ema > 0: running averages of the generators' weights, which validation,
        # export and conversion use instead of the trained weights (a named deviation; 0 = the paper)
        self.ema: dict[str, nn.Module] = {}
        if t.generator_ema > 0:
            self.ema = {role: copy.deepcopy(self.networks[role]).requires_grad_(False).eval() for role in ("G_ab", "G_ba")}
        self.base_lr = {"G_ab": t.generator_lr, "G_ba": t.generator_lr, "D_a": t.discriminator_lr, "D_b": t.discriminator_lr}
        betas = {"G_ab": t.generator_betas, "G_ba": t.generator_betas, "D_a": t.discriminator_betas, "D_b": t.discriminator_betas}
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            role: torch.optim.Adam(self.networks[role].parameters(), lr=self.base_lr[role], betas=tuple(betas[role]))
            for role in ROLES
        }
        self.step = 0
        self.best: float | None = None
        self.data = data
        self.sampler: CropSampler | None = None
        if data is not None:
            in_channels = self.networks["G_ab"].config.get("in_channels")
            if in_channels is not None and in_channels != data.feature_dim:
                raise ConfigError(
                    f"the data has {data.feature_dim} MCEP dimensions but the generator takes {in_channels}; "
                    f"set model.generator_kwargs.in_channels={data.feature_dim} and "
                    f"model.discriminator_kwargs.in_height={data.feature_dim}"
                )
            self.sampler = CropSampler(data.mceps, t.crop_frames, t.batch_size, t.seed, t.short_utterances, data.ids)
        # training.compile: the step calls compiled wrappers of the networks (same parameters); validation,
        # export and the reference step call the networks themselves
        self.calls: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dict(self.networks)
        if t.compile != "none":
            mode = None if t.compile == "default" else t.compile
            self.calls = {role: torch.compile(net, mode=mode, dynamic=False) for role, net in self.networks.items()}
        self.amp = bool(t.amp and self.device.type in ("cpu", "cuda"))
        if t.amp and not self.amp:
            log.warning("training.amp is on but the device is %s: bf16 autocast applies to CPU and CUDA; running fp32", self.device)
        elif self.amp and self.device.type == "cpu" and not cpu_has_native_bf16():
            log.warning(
                "training.amp on a CPU without native bf16 (AVX512-BF16 or AMX): the bf16 products are emulated, "
                "far slower than fp32 (30x for `paper` on an AVX2 machine); use it there to check numerics"
            )
        self._reference_mc: dict[str, Any] = {}
        self._apply_schedule()

    # -- schedule ---------------------------------------------------------------------------------
    def lr_factor(self, step: int | None = None) -> float:
        """:func:`lr_factor` of ``step`` (default: the current step) under this config."""
        t = self.config.training
        return lr_factor(self.step if step is None else step, t.lr_decay_start, t.iterations)

    def _apply_schedule(self) -> None:
        factor = self.lr_factor()
        for role, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.base_lr[role] * factor

    def learning_rates(self) -> dict[str, float]:
        """Current learning rate of each optimiser, by role."""
        return {role: float(opt.param_groups[0]["lr"]) for role, opt in self.optimizers.items()}

    def copy_state_from(self, other: "Trainer") -> None:
        """Take ``other``'s training state: the four networks' weights, their Adam states (copies, not
        shared tensors), the step and its learning rates; to run two trainers' iterations from one state
        (the equivalence tests, ``benchmarks/train_gpu.py``). Weight averages and samplers are not copied."""
        for role in ROLES:
            self.networks[role].load_state_dict(other.networks[role].state_dict())
            # a deep copy: load_state_dict keeps the given tensors when their device and dtype fit
            self.optimizers[role].load_state_dict(copy.deepcopy(other.optimizers[role].state_dict()))
        self.step = other.step
        self._apply_schedule()

    @property
    def uses_identity(self) -> bool:
        """Whether the next iteration includes the identity-mapping loss (``step < identity_steps``)."""
        t = self.config.training
        return self.step < t.identity_steps and t.identity_weight > 0

    def generator(self, role: str) -> nn.Module:
        """The generator that converts for ``role`` (``"G_ab"``, ``"G_ba"``): its weight average when
        ``training.generator_ema`` is on, else the trained network itself."""
        return self.ema.get(role, self.networks[role])

    @torch.no_grad()
    def _update_ema(self) -> None:
        """``ema = decay * ema + (1 - decay) * weights`` for both generators (after their Adam steps)."""
        if not self.ema:
            return
        weight = 1.0 - self.config.training.generator_ema
        for role, average in self.ema.items():
            # one multi-tensor kernel per generator instead of one call per parameter
            torch._foreach_lerp_(list(average.parameters()), [p.detach() for p in self.networks[role].parameters()], weight)
            for avg, b in zip(average.buffers(), self.networks[role].buffers()):
                avg.copy_(b)

    def _autocast(self):
        """bf16 autocast on the trainer's device with ``training.amp`` (the networks' products in bf16;
        parameters, gradients, losses and Adam stay fp32; under autocast the GEMM convolutions are
        PyTorch's own), else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    # -- one iteration ----------------------------------------------------------------------------
    def train_step(self, real_a: torch.Tensor | None = None, real_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One iteration: generator update, then discriminator update, then ``step += 1``.

        The algorithm of :func:`reference_train_step` (same losses and updates within float rounding,
        checked by ``tests/test_fast_step.py``), computed with no recomputation and large batches:

        - every generator output is computed once, and passes through the same generator that do not
          depend on each other share one batched call (instance normalisation keeps samples
          independent): ``G_ab([x, y])`` gives ``fake_b`` and the identity ``G_ab(y)``;
          ``G_ba([y, x, fake_b])`` gives ``fake_a``, the identity ``G_ba(x)`` and the cycle ``G_ba(fake_b)``;
          ``G_ab(fake_a)`` the other cycle (without the identity loss: ``G_ab(x)``, ``G_ba([y, fake_b])``,
          ``G_ab(fake_a)``);
        - each discriminator runs once, on ``[real, fake]``; its fake scores serve both the generators'
          adversarial loss and its own loss;
        - two backward passes through the shared graph: the generator loss to the generators'
          parameters only, the discriminator loss to the discriminators' parameters only (the gradient
          of the discriminator loss with respect to its parameters does not depend on whether the fake
          is detached). The weight gradients of the GEMM convolutions are computed with one matrix
          product per weight into persistent ``.grad`` buffers (:class:`~cyclegan_vc.models.WeightGradientSink`);
        - then the four Adam steps (switched to PyTorch's fused kernel); the discriminators' gradients
          come from their weights before any update, as in the reference.

        Batches of different shapes cannot share calls: they take :func:`reference_train_step`.
        With ``training.compile`` the four network calls go through ``torch.compile`` wrappers
        (:attr:`calls`) and the convolutions are the ordinary ones (the GEMM path is an eager-mode
        CPU optimisation, with its weight gradients outside autograd).

        Args:
            real_a, real_b: ``(N, D, crop_frames)`` normalised MCEPs of speakers A and B; drawn from
                the sampler when omitted.

        Returns:
            Detached scalar tensors: ``generator`` (total), ``adversarial_ab`` (D_b on G_ab's output),
            ``adversarial_ba``, ``cycle`` (unweighted L1 sum of both directions), ``identity``
            (unweighted; 0 after the cut-off), ``discriminator`` (total), ``discriminator_a``,
            ``discriminator_b``.
        """
        if real_a is None or real_b is None:
            if self.sampler is None:
                raise RuntimeError("Trainer without data: pass real_a and real_b to train_step")
            real_a = self.sampler.sample("A") if real_a is None else real_a
            real_b = self.sampler.sample("B") if real_b is None else real_b
        x = real_a.to(self.device, torch.float32)
        y = real_b.to(self.device, torch.float32)
        if x.shape != y.shape:  # the batched calls need equal shapes
            return reference_train_step(self, x, y)
        G_ab, G_ba, D_a, D_b = (self.calls[r] for r in ROLES)
        t = self.config.training
        identity_on = self.uses_identity
        n = x.shape[0]
        plain_convolutions = (lambda: gemm_convolutions(False)) if t.compile != "none" else nullcontext
        if t.compile == "reduce-overhead" and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: CUDA graph outputs of the last one are dead

        with self._autocast(), plain_convolutions():
            if identity_on:
                fake_b, same_b = G_ab(torch.cat([x, y])).split(n)
                fake_a, same_a, cycle_a = G_ba(torch.cat([y, x, fake_b])).split(n)
            else:
                fake_b = G_ab(x)
                fake_a, cycle_a = G_ba(torch.cat([y, fake_b])).split(n)
            cycle_b = G_ab(fake_a)
            real_score_a, fake_score_a = D_a(torch.cat([x, fake_a])).split(n)
            real_score_b, fake_score_b = D_b(torch.cat([y, fake_b])).split(n)

            adv_ab = lsgan_generator(fake_score_b)
            adv_ba = lsgan_generator(fake_score_a)
            cycle = l1(cycle_a, x) + l1(cycle_b, y)
            if identity_on:
                identity = l1(same_a, x) + l1(same_b, y)
                loss_g = adv_ab + adv_ba + t.cycle_weight * cycle + t.identity_weight * identity
            else:
                identity = torch.zeros((), device=self.device)
                loss_g = adv_ab + adv_ba + t.cycle_weight * cycle
            loss_d_a = lsgan_discriminator(real_score_a, fake_score_a)
            loss_d_b = lsgan_discriminator(real_score_b, fake_score_b)
            loss_d = loss_d_a + loss_d_b

        g_params = [p for role in ("G_ab", "G_ba") for p in self.networks[role].parameters()]
        d_params = [p for role in ("D_a", "D_b") for p in self.networks[role].parameters()]
        with plain_convolutions():
            _set_gradients(loss_g, g_params, retain_graph=True)  # through D_a, D_b: their weights get nothing
            _set_gradients(loss_d, d_params, retain_graph=False)  # stops at the fakes: G_ab, G_ba get nothing
        for role in ROLES:
            _use_fused_adam(self.optimizers[role])
            self.optimizers[role].step()

        self._update_ema()
        self.step += 1
        self._apply_schedule()
        return _loss_dict(loss_g, adv_ab, adv_ba, cycle, identity, loss_d, loss_d_a, loss_d_b)

    # -- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def convert_mcep(self, mcep: np.ndarray, direction: str) -> np.ndarray:
        """``(T, D)`` raw MCEPs -> converted ``(T, D)`` (normalise with the source's statistics,
        generator, de-normalise with the target's)."""
        if self.data is None:
            raise RuntimeError("Trainer without data has no speaker statistics")
        src, tgt, role = DIRECTIONS[direction]
        net = self.generator(role)
        x = torch.as_tensor(normalize(mcep, self.data.stats[src]).T[None], dtype=torch.float32, device=self.device)
        with _eval_mode(net), self._autocast():
            y = net(x)
        return denormalize(y[0].float().T.cpu().numpy().astype(np.float64), self.data.stats[tgt])

    @torch.no_grad()
    def validate(self, samples_dir: str | os.PathLike | None = None, writer: Any = None) -> dict[str, float]:
        """Score the current generators; lower ``score`` is better.

        With eval pairs: converts each pair's utterance in both directions, synthesises it with WORLD
        (converted F0, cached aperiodicity of the source), writes ``<samples_dir>/A2B_<id>.wav`` and
        TensorBoard audio when given, and returns ``mcd_A2B``, ``mcd_B2A`` (dB, mean over utterances,
        :func:`cyclegan_vc.metrics.mcd` against the real target recording), ``mcd_none`` (the same
        between the two unconverted recordings: the no-conversion baseline; DTW is symmetric, so one
        number serves both directions) and ``score`` (mean of the two MCDs).
        Without eval pairs: ``cycle_l1`` (L1 of ``G_ba(G_ab(x))`` against ``x`` and vice versa on
        whole training utterances, normalised domain) and ``score`` equal to it.
        """
        if self.data is None:
            raise RuntimeError("Trainer without data cannot validate")
        if not self.data.eval_pairs:
            return self._validate_cycle()
        from .metrics import mcd, mel_cepstrum

        features = self.data.features
        rate = features.sample_rate
        metrics: dict[str, float] = {}
        for direction, (src, tgt, _) in DIRECTIONS.items():
            scores, baseline = [], []
            for pair in self.data.eval_pairs:
                source, target = (pair[0], pair[1]) if src == "A" else (pair[1], pair[0])
                converted = WorldFeatures(
                    f0=convert_f0(source.f0, self.data.stats[src], self.data.stats[tgt]),
                    mcep=self.convert_mcep(source.mcep, direction),
                    ap=decode_aperiodicity(source.ap_coded, features),
                )
                wave = synthesize(converted, features)
                ref_mc = self._reference(target, tgt).mc
                scores.append(mcd(ref_mc, mel_cepstrum(wave, rate, features).mc))
                if direction == "A2B":
                    baseline.append(mcd(ref_mc, self._reference(source, src).mc))
                name = f"{direction}_{source.id.replace('/', '_')}"
                if samples_dir is not None:
                    save_audio(Path(samples_dir) / f"{name}.wav", wave, rate)
                if writer is not None:
                    clip = torch.from_numpy(np.clip(wave, -1.0, 1.0).astype(np.float32))[None]
                    writer.add_audio(f"samples/{name}", clip, self.step, sample_rate=rate)
            metrics[f"mcd_{direction}"] = float(np.mean(scores))
            if direction == "A2B":  # the DTW is symmetric: the B2A baseline is the same number
                metrics["mcd_none"] = float(np.mean(baseline))
        metrics["score"] = (metrics["mcd_A2B"] + metrics["mcd_B2A"]) / 2
        return metrics

    def _reference(self, utterance: EvalUtterance, role: str):
        """SPTK mel-cepstrum of a real eval recording (cached); WORLD resynthesis of its cached
        features when the recording cannot be read."""
        from .metrics import mel_cepstrum

        key = f"{role}/{utterance.id}"
        if key not in self._reference_mc:
            features = self.data.features
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
            self._reference_mc[key] = mel_cepstrum(wave, features.sample_rate, features)
        return self._reference_mc[key]

    def _validate_cycle(self) -> dict[str, float]:
        n = self.config.training.validation_utterances
        errors = []
        for role, (first, second) in (("A", ("G_ab", "G_ba")), ("B", ("G_ba", "G_ab"))):
            for array in self.data.mceps[role][:n]:
                x = torch.from_numpy(array)[None].to(self.device)
                forward, backward = self.generator(first), self.generator(second)
                with _eval_mode(forward, backward), self._autocast():
                    cycled = backward(forward(x))
                errors.append(float(l1(cycled, x)))
        value = float(np.mean(errors))
        return {"cycle_l1": value, "score": value}

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state as a nested dict of tensors and numbers."""
        return {
            "networks": {role: net.state_dict() for role, net in self.networks.items()},
            "ema": {role: net.state_dict() for role, net in self.ema.items()} or None,
            "optimizers": {role: opt.state_dict() for role, opt in self.optimizers.items()},
            "schedule": {
                "kind": "constant_then_linear",
                "decay_start": self.config.training.lr_decay_start,
                "total": self.config.training.iterations,
                "base_lr": dict(self.base_lr),
                "factor": self.lr_factor(),
            },
            "step": self.step,
            "best": self.best,
            "rng": _rng_state(),
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "config": self.config.to_dict(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the full training state atomically (see :mod:`cyclegan_vc.checkpoint`)."""
        return save_checkpoint(path, self.state_dict(), STATE_KIND)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a state written by :meth:`save` (any device) for an exact continuation.

        The model section of the checkpoint's config must equal this trainer's; training settings may
        differ (e.g. more iterations), and the schedule follows this trainer's config.
        """
        payload = load_checkpoint(path, STATE_KIND, device="cpu")
        require_keys(payload, ("networks", "optimizers", "step", "best", "rng", "sampler", "config"), path)
        saved_model = payload["config"].get("model")
        if saved_model != self.config.to_dict()["model"]:
            raise CheckpointError(path, f"was trained with model config {saved_model}, not {self.config.to_dict()['model']}")
        changed = _diff(payload["config"].get("training", {}), self.config.to_dict()["training"])
        if changed:
            log.info("resuming with changed training settings: %s", ", ".join(changed))
        try:
            for role in ROLES:
                self.networks[role].load_state_dict(payload["networks"][role], strict=True)
                self.optimizers[role].load_state_dict(payload["optimizers"][role])
                for group in self.optimizers[role].param_groups:
                    group["betas"] = tuple(group["betas"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(path, f"does not fit this trainer: {exc}") from None
        saved_ema = payload.get("ema") or {}
        for role, average in self.ema.items():
            if role in saved_ema:
                try:
                    average.load_state_dict(saved_ema[role], strict=True)
                except RuntimeError as exc:
                    raise CheckpointError(path, f"weight average of {role} does not fit this trainer: {exc}") from None
            else:
                average.load_state_dict(self.networks[role].state_dict())
        if self.ema and not saved_ema:
            log.info("%s holds no generator weight average: starting it from the checkpoint's weights", path)
        self.step = int(payload["step"])
        self.best = None if payload["best"] is None else float(payload["best"])
        if self.sampler is not None:
            if payload["sampler"] is None:
                raise CheckpointError(path, "holds no sampler state")
            self.sampler.load_state_dict(payload["sampler"])
        _set_rng_state(payload["rng"])
        self._apply_schedule()

    def export(self, path: str | os.PathLike, metrics: dict[str, float] | None = None) -> Path:
        """Write the conversion model (both generators, statistics, feature settings, config)."""
        if self.data is None:
            raise RuntimeError("Trainer without data cannot export a model (no speaker statistics)")
        m = self.config.model
        return export_model(
            path,
            {"G_ab": self.generator("G_ab"), "G_ba": self.generator("G_ba")},
            generator=m.generator,
            generator_kwargs=dict(self.networks["G_ab"].config),
            stats=self.data.stats,
            features=self.data.features,
            speakers=self.data.speakers,
            step=self.step,
            config=self.config.to_dict(),
            metrics=metrics,
        )


@contextmanager
def _eval_mode(*nets: nn.Module):
    """``nets`` in eval mode inside the block, each back in its own previous mode after it."""
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)


# --------------------------------------------------------------------------------------------------
# One iteration: the reference and the helpers of Trainer.train_step
# --------------------------------------------------------------------------------------------------


def reference_train_step(trainer: Trainer, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The straightforward CycleGAN-VC iteration, kept as the numerical reference of :meth:`Trainer.train_step`.

    Does what :meth:`Trainer.train_step` does, written plainly: the generator passes one by one
    (``G_ab(x)``, ``G_ba(y)``, the cycles, the identities), the discriminators frozen
    (``requires_grad_(False)``) for the generators' backward pass and one Adam step each for ``G_ab``
    and ``G_ba``; then fresh discriminator passes on the real batches and on the detached fakes, the
    discriminator loss's backward pass and one Adam step each for ``D_a`` and ``D_b``; ``step += 1``
    and the learning-rate schedule. Uses the trainer's optimisers as they are configured.

    Args:
        trainer: the trainer whose networks, optimisers and step are updated.
        real_a, real_b: ``(N, D, crop_frames)`` normalised MCEPs of speakers A and B.

    Returns:
        The loss dict of :meth:`Trainer.train_step` (detached scalars, same keys).
    """
    x = real_a.to(trainer.device, torch.float32)
    y = real_b.to(trainer.device, torch.float32)
    G_ab, G_ba, D_a, D_b = (trainer.networks[r] for r in ROLES)
    t = trainer.config.training
    identity_on = trainer.uses_identity

    for d in (D_a, D_b):
        d.requires_grad_(False)
    try:
        with trainer._autocast():
            fake_b, fake_a = G_ab(x), G_ba(y)
            cycle_a, cycle_b = G_ba(fake_b), G_ab(fake_a)
            adv_ab = lsgan_generator(D_b(fake_b))
            adv_ba = lsgan_generator(D_a(fake_a))
            cycle = l1(cycle_a, x) + l1(cycle_b, y)
            if identity_on:
                identity = l1(G_ba(x), x) + l1(G_ab(y), y)
                loss_g = adv_ab + adv_ba + t.cycle_weight * cycle + t.identity_weight * identity
            else:
                identity = torch.zeros((), device=trainer.device)
                loss_g = adv_ab + adv_ba + t.cycle_weight * cycle
        for role in ("G_ab", "G_ba"):
            trainer.optimizers[role].zero_grad(set_to_none=True)
        loss_g.backward()
        for role in ("G_ab", "G_ba"):
            trainer.optimizers[role].step()
    finally:
        for d in (D_a, D_b):
            d.requires_grad_(True)

    fake_a, fake_b = fake_a.detach(), fake_b.detach()
    with trainer._autocast():
        loss_d_a = lsgan_discriminator(D_a(x), D_a(fake_a))
        loss_d_b = lsgan_discriminator(D_b(y), D_b(fake_b))
        loss_d = loss_d_a + loss_d_b
    for role in ("D_a", "D_b"):
        trainer.optimizers[role].zero_grad(set_to_none=True)
    loss_d.backward()
    for role in ("D_a", "D_b"):
        trainer.optimizers[role].step()

    trainer._update_ema()
    trainer.step += 1
    trainer._apply_schedule()
    return _loss_dict(loss_g, adv_ab, adv_ba, cycle, identity, loss_d, loss_d_a, loss_d_b)


def _loss_dict(
    loss_g: torch.Tensor, adv_ab: torch.Tensor, adv_ba: torch.Tensor, cycle: torch.Tensor, identity: torch.Tensor,
    loss_d: torch.Tensor, loss_d_a: torch.Tensor, loss_d_b: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The loss dict of one iteration (detached scalars), as both train steps return it."""
    losses = {
        "generator": loss_g,
        "adversarial_ab": adv_ab,
        "adversarial_ba": adv_ba,
        "cycle": cycle,
        "identity": identity,
        "discriminator": loss_d,
        "discriminator_a": loss_d_a,
        "discriminator_b": loss_d_b,
    }
    return {k: v.detach() for k, v in losses.items()}


def _set_gradients(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool) -> None:
    """``p.grad = d loss / d p`` for ``params`` only (no other tensor gets a gradient).

    Weight gradients of GEMM convolutions are deferred to a :class:`WeightGradientSink` and written
    with one matrix product per weight into the parameter's existing ``.grad`` buffer, which is kept
    from step to step (no weight-sized allocation, hence no page faults, per iteration). A gradient laid
    out unlike its parameter is copied into the parameter's layout. Parameters
    that ``loss`` does not reach get ``None``, as after ``zero_grad(set_to_none=True)`` and ``backward``.
    """
    with WeightGradientSink(params) as sink:
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None and p in sink:
            buffer = p.grad
            if (
                buffer is None
                or buffer.shape != p.shape
                or buffer.dtype != p.dtype
                or buffer.device != p.device
                or not buffer.is_contiguous()
            ):
                buffer = torch.empty_like(p, memory_format=torch.contiguous_format)
            g = sink.gradient(p, out=buffer)
        elif g is not None and g.stride() != p.stride():
            # laid out like the parameter: a compiled backward returns some convolution weight gradients
            # channels-last, and PyTorch's fused CPU Adam then updates wrongly (silently; measured
            # here, torch 2.13: the moments of a 4-D weight off by 100 %)
            g = torch.empty_like(p).copy_(g)
        p.grad = g


def _use_fused_adam(optimizer: torch.optim.Optimizer) -> None:
    """Switch a :class:`torch.optim.Adam` to PyTorch's fused kernel where it has one (CPU, CUDA).

    The fused kernel updates each parameter and its two moments in one pass over them and the
    gradient, instead of about ten element-wise passes with temporaries (the same update within float
    rounding; for the paper preset's 120 M parameters 0.12 s instead of about 1 s on one CPU core).
    Idempotent; leaves other optimisers and groups with ``foreach``, ``differentiable`` or non-float
    parameters alone. The
    ``step`` counters move to the parameters' device as float32, as the fused kernel needs and as
    :meth:`~torch.optim.Optimizer.load_state_dict` does for a fused group.
    """
    if type(optimizer) is not torch.optim.Adam:
        return
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("foreach") or group.get("differentiable"):
            continue
        params = group["params"]
        if not all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
            continue
        group["fused"] = True
        for p in params:
            state = optimizer.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


# --------------------------------------------------------------------------------------------------
# The train stage
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainSummary:
    """What :func:`train` did: final ``step``, why it stopped (``"completed"``, ``"time_budget"``),
    the best validation ``best_score`` (lower is better) and the paths it wrote."""

    run: Path
    step: int
    stopped: str
    best_score: float | None
    model_best: Path | None
    model_latest: Path
    state: Path


class _StopFlag:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop after the current iteration;
    a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("%s received: stopping after this iteration and saving", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _resolve_config(run: Path, preset: str | os.PathLike | None, resume: bool, iterations: int | None, overrides: Iterable[str]) -> Config:
    state = run / "checkpoints" / STATE_LATEST
    if resume:
        if not state.is_file():
            raise FileNotFoundError(f"{run}: nothing to resume (no checkpoints/{STATE_LATEST})")
        structure = json.loads(read_metadata(state)["structure"])
        base, source = structure.get("config"), f"{state} (saved config)"
        if not isinstance(base, dict):
            raise CheckpointError(state, "holds no config")
        if preset is not None:
            log.info("resuming: using the run's saved config; preset %s is ignored", preset)
    else:
        if state.exists():
            raise FileExistsError(f"{run} already holds a training run; pass resume=True to continue it or choose another directory")
        base, path = read_preset("paper" if preset is None else preset)
        source = str(path)
    data = apply_overrides(base, overrides)
    if iterations is not None:
        data.setdefault("training", {})["iterations"] = iterations
    if overrides or iterations is not None:
        source += " with overrides"
    return config_from_dict(data, source=source)


def train(
    data: str | os.PathLike,
    run: str | os.PathLike,
    preset: str | os.PathLike | None = None,
    iterations: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    device: str = "auto",
    overrides: Iterable[str] = (),
    *,
    progress: bool = True,
    callback: Callable[[Trainer, dict[str, torch.Tensor]], None] | None = None,
) -> TrainSummary:
    """Train CycleGAN-VC on a prepared-data directory into a run directory (layout in the module doc).

    Args:
        data: prepared-data directory (:func:`cyclegan_vc.prepare.prepare`).
        run: run directory; created. A new run refuses a directory that already holds a state.
        preset: ``"paper"`` (default), ``"small"``, ``"debug"`` or a YAML path; ignored on resume,
            where the run's saved config is used.
        iterations: total iterations (overrides ``training.iterations``; the schedule ends there).
        minutes: stop cleanly (validate, save) after this many minutes of this call.
        resume: continue from ``RUN/checkpoints/state_latest.safetensors``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        overrides: ``"section.key=value"`` strings (YAML values), applied last.
        progress: show the tqdm progress bar.
        callback: called as ``callback(trainer, losses)`` after every iteration.

    Returns:
        A :class:`TrainSummary`.

    Raises:
        KeyboardInterrupt: after saving the state and the latest model, when SIGINT or SIGTERM stopped
            the run (a resume continues it exactly).
    """
    from torch.utils.tensorboard import SummaryWriter

    run = Path(run)
    config = _resolve_config(run, preset, resume, iterations, overrides)
    t = config.training
    training_data = TrainingData.from_prepared(data, eval_pairs=t.validation_utterances)
    trainer = Trainer(config, training_data, device=device)
    ckpt_dir = run / "checkpoints"
    state_path = ckpt_dir / STATE_LATEST
    if resume:
        trainer.load(state_path)
        log.info("resumed %s at step %d", run, trainer.step)
    save_config(config, run / "config.yaml", package_version=__version__)
    # Where the features came from: evaluation finds the speakers' training recordings through it.
    atomic_write_json(run / "data.json", {"prepared": str(Path(data).resolve())})
    history_path = run / "validation.json"
    history = read_json(history_path) if (resume and history_path.is_file()) else []
    log.info(
        "training %s -> %s on %s: %d iterations, %s", training_data.speakers["A"], training_data.speakers["B"],
        trainer.device, t.iterations, "validation on %d eval pairs" % len(training_data.eval_pairs)
        if training_data.eval_pairs else "validation by cycle error (no eval pairs)",
    )

    writer = SummaryWriter(str(run / "tensorboard"), purge_step=trainer.step + 1 if resume else None)
    saved_step = trainer.step if resume else -1
    validated_step = -1
    stopped = "completed"
    start = time.monotonic()

    def save_all() -> None:
        nonlocal saved_step
        trainer.save(state_path)
        trainer.export(run / MODEL_LATEST, metrics=history[-1] if history else None)
        saved_step = trainer.step

    def validate() -> None:
        nonlocal validated_step
        metrics = trainer.validate(samples_dir=run / "samples" / f"step_{trainer.step:08d}", writer=writer)
        validated_step = trainer.step
        for key, value in metrics.items():
            writer.add_scalar(f"validation/{key}", value, trainer.step)
        history.append({"step": trainer.step, **metrics})
        atomic_write_json(history_path, history)
        text = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        if trainer.best is None or metrics["score"] < trainer.best:
            trainer.best = metrics["score"]
            trainer.export(run / MODEL_BEST, metrics=metrics)
            text += " (best)"
        log.info("step %d validation: %s", trainer.step, text)

    bar = tqdm(total=t.iterations, initial=trainer.step, unit="it", dynamic_ncols=True, disable=not progress, desc="train")
    try:
        with _StopFlag() as stop:
            while trainer.step < t.iterations:
                losses = trainer.train_step()
                bar.update(1)
                step = trainer.step
                if callback is not None:
                    callback(trainer, losses)
                if step % t.log_interval == 0:
                    values = {k: float(v) for k, v in losses.items()}
                    for key, value in values.items():
                        writer.add_scalar(f"loss/{key}", value, step)
                    for role, lr in trainer.learning_rates().items():
                        writer.add_scalar(f"lr/{role}", lr, step)
                    bar.set_postfix(G=f"{values['generator']:.3f}", D=f"{values['discriminator']:.3f}",
                                    cyc=f"{values['cycle']:.3f}", refresh=False)
                    if not all(math.isfinite(v) for v in values.values()):
                        raise FloatingPointError(f"non-finite loss at step {step}: {values}")
                if t.validation_interval and step % t.validation_interval == 0:
                    validate()
                milestone = t.milestone_interval and step % t.milestone_interval == 0
                if (t.checkpoint_interval and step % t.checkpoint_interval == 0) or milestone:
                    save_all()
                    if milestone:
                        copy_checkpoint(state_path, ckpt_dir / f"state_{step:08d}.safetensors")
                if stop.signal is not None:
                    stopped = "interrupted"
                    break
                if minutes is not None and time.monotonic() - start >= minutes * 60:
                    stopped = "time_budget"
                    log.info("time budget of %g min reached at step %d", minutes, step)
                    break
            if stopped != "interrupted" and validated_step != trainer.step:
                validate()
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    except Exception:
        stopped = "failed"
        log.error("training failed at step %d; the last saved state (step %d) is kept", trainer.step, saved_step)
        raise
    finally:
        bar.close()
        try:
            if saved_step != trainer.step and stopped != "failed":
                if stopped == "interrupted":
                    log.warning("interrupted at step %d: saving the training state", trainer.step)
                save_all()
        finally:
            writer.close()
    if stopped == "interrupted":
        raise KeyboardInterrupt(f"training interrupted at step {trainer.step}; state saved in {state_path}")
    best = run / MODEL_BEST
    return TrainSummary(
        run=run,
        step=trainer.step,
        stopped=stopped,
        best_score=trainer.best,
        model_best=best if best.is_file() else None,
        model_latest=run / MODEL_LATEST,
        state=state_path,
    )

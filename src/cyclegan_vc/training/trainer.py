"""The :class:`Trainer`: networks and optimisers keyed by role, the schedule, and the training state.

One iteration (:meth:`Trainer.train_step`), with ``x`` a batch of crops of speaker A and ``y`` of B,
drawn independently (normalised MCEPs, ``(N, D, crop_frames)``):

1. generators: ``fake_b = G_ab(x)``, ``fake_a = G_ba(y)``, cycles ``G_ba(fake_b)``, ``G_ab(fake_a)``,
   identities ``G_ba(x)``, ``G_ab(y)`` while ``step < identity_steps``; the loss in
   :mod:`cyclegan_vc.losses`; one Adam step each for ``G_ab`` and ``G_ba`` (the discriminators'
   parameters get no gradient from this loss);
2. discriminators: least-squares loss on ``(x, fake_a)`` for ``D_a`` and ``(y, fake_b)`` for ``D_b``
   with the fakes of step 1 detached; one Adam step each for ``D_a`` and ``D_b``;
3. with ``training.generator_ema > 0`` (a named deviation; 0, the paper, by default), each
   generator's weight average moves towards its new weights: ``ema = decay * ema + (1 - decay) * w``;
   the averages, not the trained weights, are then what validation scores and the exported models hold;
4. ``step += 1`` and every optimiser's learning rate is set to its own base rate times
   :func:`lr_factor` of the new step.

The successors' objectives are options of the same iteration:

- ``training.two_step_adversarial`` (CycleGAN-VC2, Kaneko et al. 2019): two more discriminators,
  ``D2_a`` and ``D2_b`` (networks of their own, built like ``D_a`` and ``D_b``, each with its own Adam
  and the discriminators' learning rate, betas and schedule), judge the cycle-reconstructed features
  ``G_ba(G_ab(x))`` and ``G_ab(G_ba(y))`` against the real ones (least squares, real -> 1,
  reconstructed -> 0); the generators' loss gains ``lsgan_generator`` of their scores of the cycles;
- ``training.mask_frames = M > 0`` (filling in frames, MaskCycleGAN-VC, Kaneko et al. 2021): each
  source crop of step 1 gets a run of ``0..M`` zeroed frames (:class:`~.data.MaskSampler`, seeded,
  part of the training state), and the generator its mask as a second input (1 kept, 0 filled in);
  the cycle and identity passes, validation and conversion use all-ones masks.

The iteration itself is in :mod:`.steps`, validation in :mod:`.validation`.
"""

from __future__ import annotations

import copy
import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..checkpoint import STATE_KIND, CheckpointError, export_model, load_checkpoint, require_keys, save_checkpoint
from ..config import Config
from ..conversion import VoiceConverter
from ..devices import cpu_has_native_bf16, resolve_device
from ..directions import DISCRIMINATORS, GENERATORS
from ..models import build_discriminator, build_generator
from ..options import ConversionOptions
from .data import CropSampler, MaskSampler, TrainingData, rng_state, set_rng_state
from .distributed import World, rank_seed, world
from .steps import fast_train_step, reference_train_step
from .validation import ReferenceCepstra, validate

__all__ = ["ROLES", "SECOND_STEP_DISCRIMINATORS", "Trainer", "lr_factor"]

log = logging.getLogger(__name__)

#: the networks of CycleGAN-VC, by role, in the order they are built and stepped
ROLES = GENERATORS + DISCRIMINATORS
#: the discriminators of the two-step adversarial loss (CycleGAN-VC2's D'_A and D'_B): ``D2_a`` judges
#: speaker A's cycle-reconstructed features ``G_ba(G_ab(x))``, ``D2_b`` speaker B's ``G_ab(G_ba(y))``
SECOND_STEP_DISCRIMINATORS = ("D2_a", "D2_b")


def lr_factor(step: int, decay_start: int, total: int) -> float:
    """Learning-rate multiplier after ``step`` completed iterations.

    1 while ``step < decay_start``, then linear to 0 at ``step == total``:
    ``(total - step) / (total - decay_start)``; always 1 when ``total <= decay_start``.
    """
    if total <= decay_start or step <= decay_start:
        return 1.0
    return max(0.0, (total - step) / (total - decay_start))


class Trainer:
    """Networks, optimisers and the schedule of one CycleGAN-VC training, keyed by role.

    ``networks`` and ``optimizers`` are dicts over :attr:`roles` (``G_ab``: A->B, ``G_ba``: B->A,
    ``D_a``, ``D_b``, and with ``training.two_step_adversarial`` ``D2_a``, ``D2_b``); each network has
    its own Adam optimiser with its own learning rate and betas. Weights are initialised from
    ``training.seed`` without touching the global RNG.

    Args:
        config: the training configuration. With ``data``, the networks take the data's mel-cepstrum
            dimension whatever the config's ``in_channels`` / ``in_height`` say (:attr:`config` is then
            the config with the data's dimension).
        data: training data; needed for :meth:`train_step` without explicit batches, for
            :meth:`validate` and :meth:`export`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

    Attributes:
        roles: the networks' roles, in the order their optimisers step.
        masks: the :class:`~.data.MaskSampler` of filling in frames (``training.mask_frames > 0``), else ``None``.
        calls: by role, what :meth:`train_step` calls: the network itself, or its ``torch.compile``
            wrapper (same parameters) with ``training.compile``.
    """

    def __init__(self, config: Config, data: TrainingData | None = None, device: str | torch.device = "cpu") -> None:
        config = config.validate()
        if data is not None:
            fitted = config.with_feature_dim(data.feature_dim)
            if fitted is not config:
                log.info("the prepared data has %d mel-cepstral coefficients: the networks take them", data.feature_dim)
            config = fitted
        self.config = config
        #: the processes of this training (torchrun); a single process unless WORLD_SIZE > 1
        self.world: World = world()
        if self.world.distributed and str(device) in ("auto", "cuda") and torch.cuda.is_available():
            device = f"cuda:{self.world.local_rank}"
        self.device = resolve_device(device)
        t, m = config.training, config.model
        self.roles: tuple[str, ...] = ROLES + (SECOND_STEP_DISCRIMINATORS if t.two_step_adversarial else ())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            # built in role order from one seeded stream: the second-step discriminators start from
            # weights of their own, and the first four from the same weights with or without them
            self.networks: dict[str, nn.Module] = {
                role: build_generator(m.generator, **m.generator_kwargs) if role in GENERATORS
                else build_discriminator(m.discriminator, **m.discriminator_kwargs)
                for role in self.roles
            }
        for net in self.networks.values():
            net.to(self.device).train()
        # training.generator_ema > 0: running averages of the generators' weights, which validation,
        # export and conversion use instead of the trained weights (a named deviation; 0 = the paper)
        self.ema: dict[str, nn.Module] = {}
        if t.generator_ema > 0:
            self.ema = {role: copy.deepcopy(self.networks[role]).requires_grad_(False).eval() for role in GENERATORS}
        self.base_lr = {role: t.generator_lr if role in GENERATORS else t.discriminator_lr for role in self.roles}
        betas = {role: t.generator_betas if role in GENERATORS else t.discriminator_betas for role in self.roles}
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            role: torch.optim.Adam(self.networks[role].parameters(), lr=self.base_lr[role], betas=tuple(betas[role]))
            for role in self.roles
        }
        self.step = 0
        self.best: float | None = None
        self.data = data
        self.sampler: CropSampler | None = None
        seed = rank_seed(t.seed, self.world.rank)  # each rank draws its own crops and masks
        if data is not None:
            self.sampler = CropSampler(data.mceps, t.crop_frames, t.batch_size, seed, t.short_utterances, data.ids)
        self.masks = MaskSampler(t.mask_frames, seed) if t.mask_frames > 0 else None
        # training.compile: the step calls compiled wrappers of the networks (same parameters); validation,
        # export and the reference step call the networks themselves
        self.calls: dict[str, Callable[..., torch.Tensor]] = dict(self.networks)
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
        self.reference_cepstra = ReferenceCepstra(data.features) if data is not None else None
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
        """Take ``other``'s training state: the networks' weights, their Adam states (copies, not shared
        tensors), the step and its learning rates; to run two trainers' iterations from one state (the
        equivalence tests, ``benchmarks/train_gpu.py``). Weight averages and samplers are not copied."""
        for role in self.roles:
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

    def finish_step(self) -> None:
        """The end of an iteration, after every optimiser stepped: weight averages, ``step += 1``, the
        learning rates of the new step."""
        self._update_ema()
        self.step += 1
        self._apply_schedule()

    def autocast(self):
        """bf16 autocast on the trainer's device with ``training.amp`` (the networks' products in bf16;
        parameters, gradients, losses and Adam stay fp32; under autocast the GEMM convolutions are
        PyTorch's own), else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    @staticmethod
    @contextmanager
    def eval_mode(*nets: nn.Module) -> Iterator[None]:
        """``nets`` in eval mode inside the block, each back in its own previous mode after it."""
        modes = [net.training for net in nets]
        for net in nets:
            net.eval()
        try:
            yield
        finally:
            for net, mode in zip(nets, modes):
                net.train(mode)

    # -- one iteration ----------------------------------------------------------------------------
    def train_step(
        self,
        real_a: torch.Tensor | None = None,
        real_b: torch.Tensor | None = None,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One iteration: generator update, then discriminator update, then ``step += 1``.

        The algorithm of :func:`~.steps.reference_train_step` (same losses and updates within float
        rounding, checked by ``tests/test_fast_step.py``), computed by :func:`~.steps.fast_train_step`
        with no recomputation and large batches. Batches of different shapes cannot share calls:
        they take :func:`~.steps.reference_train_step`.

        Args:
            real_a, real_b: ``(N, D, crop_frames)`` normalised MCEPs of speakers A and B; drawn from
                the sampler when omitted.
            mask_a, mask_b: with filling in frames, ``(N, 1, crop_frames)`` masks of ``real_a`` and
                ``real_b`` (1 kept, 0 filled in); drawn from :attr:`masks` when omitted.

        Returns:
            Detached scalar tensors (:func:`~.steps.loss_dict`): ``generator`` (total),
            ``adversarial_ab`` (D_b on G_ab's output), ``adversarial_ba``, ``cycle`` (unweighted L1 sum
            of both directions), ``identity`` (unweighted; 0 after the cut-off), ``discriminator``
            (total), ``discriminator_a``, ``discriminator_b``; with the two-step adversarial loss also
            ``adversarial2_a``, ``adversarial2_b``, ``discriminator2_a``, ``discriminator2_b``.
        """
        if real_a is None or real_b is None:
            if self.sampler is None:
                raise RuntimeError("Trainer without data: pass real_a and real_b to train_step")
            real_a = self.sampler.sample("A") if real_a is None else real_a
            real_b = self.sampler.sample("B") if real_b is None else real_b
        x = real_a.to(self.device, torch.float32)
        y = real_b.to(self.device, torch.float32)
        if self.masks is None:
            if mask_a is not None or mask_b is not None:
                raise ValueError("masks given to a trainer without filling in frames (training.mask_frames is 0)")
        else:
            mask_a = self.masks.sample(x.shape[0], x.shape[-1]) if mask_a is None else mask_a
            mask_b = self.masks.sample(y.shape[0], y.shape[-1]) if mask_b is None else mask_b
            mask_a, mask_b = mask_a.to(self.device, torch.float32), mask_b.to(self.device, torch.float32)
        if x.shape != y.shape:  # the batched calls need equal shapes
            losses = reference_train_step(self, x, y, mask_a, mask_b)
        else:
            losses = fast_train_step(self, x, y, mask_a, mask_b)
        if self.world.distributed:  # the global batch's losses, the same on every rank
            names = list(losses)
            averaged = self.world.mean(torch.stack([losses[k] for k in names]))
            losses = dict(zip(names, averaged.unbind()))
        return losses

    # -- conversion and validation ----------------------------------------------------------------
    @contextmanager
    def converter(self, options: ConversionOptions | None = None) -> Iterator[VoiceConverter]:
        """A :class:`~cyclegan_vc.conversion.VoiceConverter` over the current generators (their weight
        averages with ``training.generator_ema``) and the data's statistics and features, with
        ``options`` (default: the paper's conversion); the generators are back in their own modes after
        the block."""
        if self.data is None:
            raise RuntimeError("Trainer without data has no speaker statistics")
        generators = {role: self.generator(role) for role in GENERATORS}
        with self.eval_mode(*generators.values()):
            yield VoiceConverter(
                generators, self.data.stats, self.data.features, self.data.speakers,
                device=self.device, options=options, step=self.step,
            )

    def convert_mcep(self, mcep: np.ndarray, direction: str, options: ConversionOptions | None = None) -> np.ndarray:
        """``(T, D)`` raw MCEPs -> converted ``(T, D)``, as :meth:`VoiceConverter.convert_mcep
        <cyclegan_vc.conversion.VoiceConverter.convert_mcep>` converts them with the current generators."""
        with self.converter(options) as converter:
            return converter.convert_mcep(mcep, direction)

    def validate(
        self, samples_dir: str | os.PathLike | None = None, writer: Any = None, options: ConversionOptions | None = None
    ) -> dict[str, float]:
        """Score the current generators (:func:`~.validation.validate`); lower ``score`` is better."""
        return validate(self, samples_dir, writer, options)

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state as a nested dict of tensors and numbers; in a distributed run (a
        collective: every rank calls it) with ``ranks``, each rank's ``rng``, ``sampler`` and ``masks``."""
        state = {
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
            **self._own_draws(),
            "config": self.config.to_dict(),
        }
        if self.world.distributed:  # every rank's draws (a collective), for an exact resume of each
            state["ranks"] = self.world.gather(self._own_draws())
        return state

    def _own_draws(self) -> dict[str, Any]:
        """What this process draws from: the global generators, the crop and mask samplers."""
        return {
            "rng": rng_state(),
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "masks": self.masks.state_dict() if self.masks is not None else None,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the full training state atomically (see :mod:`cyclegan_vc.checkpoint`); in a distributed
        run every rank calls it and rank 0 writes."""
        state = self.state_dict()
        if self.world.main:
            save_checkpoint(path, state, STATE_KIND)
        return Path(path)

    def load(self, path: str | os.PathLike) -> None:
        """Restore a state written by :meth:`save` (any device) for an exact continuation.

        The model section of the checkpoint's config must equal this trainer's; training settings may
        differ (e.g. more iterations), and the schedule follows this trainer's config.

        Raises:
            CheckpointError: the file is no training state, or one of another model configuration.
        """
        payload = load_checkpoint(path, STATE_KIND, device="cpu")
        require_keys(payload, ("networks", "optimizers", "step", "best", "rng", "sampler", "config"), path)
        saved_model = payload["config"].get("model")
        if saved_model != self.config.to_dict()["model"]:
            raise CheckpointError(path, f"was trained with model config {saved_model}, not {self.config.to_dict()['model']}")
        if set(payload["networks"]) != set(self.roles):
            raise CheckpointError(
                path, f"holds the networks {sorted(payload['networks'])}, this trainer has {sorted(self.roles)} "
                f"(training.two_step_adversarial differs)"
            )
        changed = _diff(payload["config"].get("training", {}), self.config.to_dict()["training"])
        if changed:
            log.info("resuming with changed training settings: %s", ", ".join(changed))
        try:
            for role in self.roles:
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
        payload.update(self._draws_of_this_rank(payload, path))
        if self.sampler is not None:
            if payload["sampler"] is None:
                raise CheckpointError(path, "holds no sampler state")
            self.sampler.load_state_dict(payload["sampler"])
        if self.masks is not None:
            if payload.get("masks") is None:
                raise CheckpointError(path, "holds no mask sampler state (it was not trained with filling in frames)")
            self.masks.load_state_dict(payload["masks"])
        set_rng_state(payload["rng"])
        self._apply_schedule()

    def _draws_of_this_rank(self, payload: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
        """The ``rng``/``sampler``/``masks`` entries this rank resumes from: its own when the state was
        saved by as many processes, else (with a warning: the continuation is then not exact) rank 0's
        own or fresh draws."""
        ranks = payload.get("ranks") or [{k: payload[k] for k in ("rng", "sampler", "masks") if k in payload}]
        if len(ranks) == self.world.size:
            return ranks[self.world.rank]
        log.warning(
            "%s was saved by %d process(es), this run has %d: training continues, but not exactly as it would have",
            path, len(ranks), self.world.size,
        )
        if self.world.rank < len(ranks):
            return ranks[self.world.rank]
        return self._own_draws()  # this rank's fresh samplers

    def export(self, path: str | os.PathLike, metrics: dict[str, float] | None = None) -> Path:
        """Write the conversion model (both generators, statistics, feature settings, config)."""
        if self.data is None:
            raise RuntimeError("Trainer without data cannot export a model (no speaker statistics)")
        return export_model(
            path,
            {role: self.generator(role) for role in GENERATORS},
            generator=self.config.model.generator,
            generator_kwargs=dict(self.networks["G_ab"].config),
            stats=self.data.stats,
            features=self.data.features,
            speakers=self.data.speakers,
            step=self.step,
            config=self.config.to_dict(),
            metrics=metrics,
        )


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]

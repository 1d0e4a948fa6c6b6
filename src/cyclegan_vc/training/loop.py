"""The ``train`` stage: config resolution, the training loop, stopping on a signal or a time budget, saving.

Run directory written by :func:`train`::

    RUN/config.yaml                          resolved config + package_version (loads with load_config)
    RUN/checkpoints/state_latest.safetensors full training state (exact resume)
    RUN/checkpoints/state_00100000.safetensors  milestone copies (training.milestone_interval)
    RUN/model_latest.safetensors             exported conversion model, latest weights
    RUN/model_best.safetensors               exported conversion model with the best validation score
    RUN/validation.json                      every validation: step and metrics
    RUN/data.json                            {"prepared": absolute path of the prepared-data directory,
                                              "speakers": role -> speaker name}
    RUN/samples/step_00005000/A2B_<id>.wav   converted held-out utterances
    RUN/tensorboard/                         scalars (losses, learning rates, validation) and audio
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoint import MODEL_BEST, MODEL_LATEST, CheckpointError, copy_checkpoint, read_metadata
from ..config import Config, apply_overrides, config_from_dict, read_preset, save_config
from ..utils import UserError, atomic_write_json, read_json, remove_stale_temporaries
from .data import TrainingData
from .trainer import Trainer

__all__ = ["STATE_LATEST", "NonFiniteLoss", "TrainSummary", "TrainingStopped", "train"]

log = logging.getLogger(__name__)

STATE_LATEST = "state_latest.safetensors"


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


class TrainingStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run after saving its state; :attr:`signum` says which (the command
    line exits with 128 + signum, as a shell reports a process the signal ended)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


class NonFiniteLoss(FloatingPointError):
    """A training loss became NaN or infinite: the message names the step, the losses and the state kept."""


class _StopFlag:
    """SIGINT/SIGTERM during training: a signal only asks the loop to stop, so a saved state is never
    one of an iteration half done.

    The first signal asks the loop to stop after the current iteration (and to save). A second SIGINT
    inside an iteration (:meth:`iteration`) is deferred to the iteration's end, where the loop stops at
    once (:attr:`urgent`: no validation); outside one (validation, saving) it interrupts at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.urgent = False
        #: an exception ended an iteration part-way: the trainer's state is not one to save
        self.broken = False
        self._in_iteration = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    @contextmanager
    def iteration(self) -> Iterator[None]:
        """Around one :meth:`Trainer.train_step`: the span in which a second SIGINT waits."""
        self._in_iteration = True
        try:
            yield
        except BaseException:
            self.broken = True
            raise
        self._in_iteration = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            if not self._in_iteration:
                raise KeyboardInterrupt
            self.urgent = True
            log.warning("SIGINT again: stopping as soon as this iteration ends")
            return
        self.signal = signum
        log.warning("%s received: stopping after this iteration and saving", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _LossCheck:
    """Every iteration's losses checked for NaN and infinity, without a device sync per iteration:
    each iteration adds one device-side flag, :meth:`raise_if_bad` reads them (at logging, before any
    validation or save, and at the end)."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]] = []

    def add(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        self._pending.append((step, torch.isfinite(torch.stack(list(losses.values()))).all(), losses))

    def raise_if_bad(self, saved_step: int) -> None:
        pending, self._pending = self._pending, []
        for step, finite, losses in pending:
            if not bool(finite):
                bad = ", ".join(f"{k} {float(v)}" for k, v in losses.items() if not math.isfinite(float(v)))
                kept = f"the state saved at step {saved_step} is kept" if saved_step >= 0 else "no state was saved"
                raise NonFiniteLoss(
                    f"non-finite loss at step {step} ({bad}); {kept}: resume from it with lower learning rates "
                    f"(--set training.generator_lr=... training.discriminator_lr=...) or check the prepared data"
                )


def _resolve_config(run: Path, preset: str | os.PathLike | None, resume: bool, iterations: int | None, overrides: Iterable[str]) -> Config:
    state = run / "checkpoints" / STATE_LATEST
    if resume:
        if not state.is_file():
            raise UserError(f"{run}: nothing to resume (no checkpoints/{STATE_LATEST}); train without --resume to start a run there")
        structure = json.loads(read_metadata(state)["structure"])
        base, source = structure.get("config"), f"{state} (saved config)"
        if not isinstance(base, dict):
            raise CheckpointError(state, "holds no config")
        if preset is not None:
            log.warning("resuming: the run's saved config is used; --preset %s is ignored", preset)
    else:
        if state.exists():
            raise UserError(f"{run} already holds a training run: pass --resume to continue it, or choose another run folder")
        base, path = read_preset("paper" if preset is None else preset)
        source = str(path)
    data = apply_overrides(base, overrides)
    if iterations is not None:
        data.setdefault("training", {})["iterations"] = iterations
    if overrides or iterations is not None:
        source += " with overrides"
    return config_from_dict(data, source=source)


def _history_until(run: Path, history: list[dict[str, Any]], trainer: Trainer) -> list[dict[str, Any]]:
    """On resume: the validations up to the resumed step only, and no ``model_best`` from after it.

    A run that stopped without saving (a failure, a killed process) may have validated, and chosen a
    ``model_best``, after the state it resumes from; the resumed run repeats those steps. Their
    entries are dropped; a ``model_best`` of a later step is removed and the best is chosen again from
    the validations that follow (its weights are gone), else the state's best score stands.
    """
    step = trainer.step
    kept = [entry for entry in history if int(entry["step"]) <= step]
    if len(kept) != len(history):
        later = [int(entry["step"]) for entry in history if int(entry["step"]) > step]
        log.warning("%s: dropping the validations of steps %s, after the resumed step %d", run / "validation.json", later, step)
    best = run / MODEL_BEST
    if best.is_file():
        try:
            best_step = int(json.loads(read_metadata(best)["structure"])["step"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            best_step = None
        if best_step is None or best_step > step:
            best.unlink()
            trainer.best = None
            log.warning(
                "%s was %s: removed; the best model is chosen again from the validations after step %d", best,
                f"from step {best_step}, after the resumed step {step}" if best_step is not None else "unreadable", step,
            )
    return kept


class _NoWriter:
    """The TensorBoard writer of the ranks that write nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_audio(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _check_same_data(run: Path, data: Path, speakers: dict[str, str]) -> None:
    """On resume: the run continues on the prepared data it was trained on.

    Another folder than ``RUN/data.json`` names is refused while that one exists (it would switch
    speakers, or their statistics, silently); a moved folder is accepted when it holds the same speakers.
    """
    info = run / "data.json"
    try:
        recorded = read_json(info)
        before = Path(recorded["prepared"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # an older run or a damaged file: nothing to compare with
    if before == data.resolve():
        return
    names = recorded.get("speakers")
    if names is None and (run / MODEL_LATEST).is_file():
        try:
            names = json.loads(read_metadata(run / MODEL_LATEST)["structure"]).get("speakers")
        except (CheckpointError, ValueError, AttributeError):
            names = None
    if before.is_dir() or names != speakers:
        was = f"{names['A']} -> {names['B']}, " if isinstance(names, dict) and {"A", "B"} <= set(names) else ""
        raise UserError(
            f"{run} was trained on {before} ({was}see {info}), not {data}: resume with --data {before}, "
            f"or train a new run on {data}"
        )
    log.warning("resuming %s on %s: its prepared data was %s, which is gone; the speakers are the same", run, data, before)


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

    The networks take the prepared data's mel-cepstrum dimension (``model.generator_kwargs.in_channels``
    and ``model.discriminator_kwargs.in_height`` follow it, and ``RUN/config.yaml`` says so).

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

    Stopping: the first SIGINT (Ctrl-C) or SIGTERM stops the run after the iteration in progress; a
    second SIGINT stops it as soon as that iteration ends, skipping validation. Either way the state
    saved is that of whole iterations.

    On resume, ``validation.json`` entries (and a ``model_best``) from after the resumed step, left by a
    run that stopped without saving, are dropped: the resumed run validates those steps again.

    Raises:
        TrainingStopped: (a KeyboardInterrupt) after saving the state and the latest model, when SIGINT
            or SIGTERM stopped the run (a resume continues it exactly); its ``signum`` says which.
        UserError: a new run into a folder that holds one, a resume of a folder that holds none, or a
            resume on other prepared data than the run's.
        NonFiniteLoss: a loss became NaN or infinite (the last saved state is kept).
    """
    from torch.utils.tensorboard import SummaryWriter

    run, data = Path(run), Path(data)
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: the run folder is a file; choose a folder")
    config = _resolve_config(run, preset, resume, iterations, overrides)
    t = config.training
    training_data = TrainingData.from_prepared(data, eval_pairs=t.validation_utterances)
    if resume:
        _check_same_data(run, data, training_data.speakers)
    trainer = Trainer(config, training_data, device=device)
    main = trainer.world.main  # in a distributed run, rank 0 alone writes files
    ckpt_dir = run / "checkpoints"
    state_path = ckpt_dir / STATE_LATEST
    for folder in (run, ckpt_dir) if main else ():  # what a killed run was writing
        if folder.is_dir():
            for tmp in remove_stale_temporaries(folder):
                log.info("removed %s, left by a process that was killed while writing it", tmp)
    if resume:
        trainer.load(state_path)
        log.info("resumed %s at step %d", run, trainer.step)
    if main:
        save_config(trainer.config, run / "config.yaml", package_version=__version__)
        # Where the features came from: evaluation finds the speakers' training recordings through it.
        atomic_write_json(run / "data.json", {"prepared": str(data.resolve()), "speakers": dict(training_data.speakers)})
    history_path = run / "validation.json"
    history = read_json(history_path) if (resume and history_path.is_file()) else []
    if resume and main:
        history = _history_until(run, history, trainer)
        atomic_write_json(history_path, history)
    elif resume:
        history = [entry for entry in history if int(entry["step"]) <= trainer.step]
    log.info(
        "training %s -> %s on %s: %d iterations, %s%s", training_data.speakers["A"], training_data.speakers["B"],
        trainer.device, t.iterations, "validation on %d eval pairs" % len(training_data.eval_pairs)
        if training_data.eval_pairs else "validation by cycle error (no eval pairs)",
        f"; {trainer.world.size} processes, a global batch of {trainer.world.size * t.batch_size}"
        if trainer.world.distributed else "",
    )

    writer = SummaryWriter(str(run / "tensorboard"), purge_step=trainer.step + 1 if resume else None) if main else _NoWriter()
    saved_step = trainer.step if resume else -1
    validated_step = int(history[-1]["step"]) if history else -1  # a resumed finished run validates nothing twice
    stopped = "completed"
    checks = _LossCheck()
    start = time.monotonic()

    def save_all() -> None:
        nonlocal saved_step
        checks.raise_if_bad(saved_step)
        trainer.save(state_path)  # every rank: it gathers their draws
        if main:
            trainer.export(run / MODEL_LATEST, metrics=history[-1] if history else None)
        saved_step = trainer.step

    def validate() -> None:
        nonlocal validated_step
        checks.raise_if_bad(saved_step)
        if not main:  # rank 0 validates; the others go on to the next iteration's all-reduce and wait there
            validated_step = trainer.step
            return
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

    bar = tqdm(total=t.iterations, initial=trainer.step, unit="it", dynamic_ncols=True, disable=not progress or not main, desc="train")
    stop = _StopFlag()
    try:
        with stop:
            while trainer.step < t.iterations:
                with stop.iteration():
                    losses = trainer.train_step()
                bar.update(1)
                step = trainer.step
                checks.add(step, losses)
                if stop.urgent:
                    checks.raise_if_bad(saved_step)
                    raise KeyboardInterrupt
                if callback is not None:
                    callback(trainer, losses)
                if step % t.log_interval == 0:
                    checks.raise_if_bad(saved_step)
                    values = {k: float(v) for k, v in losses.items()}
                    for key, value in values.items():
                        writer.add_scalar(f"loss/{key}", value, step)
                    for role, lr in trainer.learning_rates().items():
                        writer.add_scalar(f"lr/{role}", lr, step)
                    bar.set_postfix(G=f"{values['generator']:.3f}", D=f"{values['discriminator']:.3f}",
                                    cyc=f"{values['cycle']:.3f}", refresh=False)
                if t.validation_interval and step % t.validation_interval == 0:
                    validate()
                milestone = t.milestone_interval and step % t.milestone_interval == 0
                if (t.checkpoint_interval and step % t.checkpoint_interval == 0) or milestone:
                    save_all()
                    if milestone and main:
                        copy_checkpoint(state_path, ckpt_dir / f"state_{step:08d}.safetensors")
                # every rank stops at the same step: a signal or the budget on any of them stops all
                signalled, out_of_time = trainer.world.agree(
                    stop.signal is not None, minutes is not None and time.monotonic() - start >= minutes * 60
                )
                if signalled:
                    stopped = "interrupted"
                    break
                if out_of_time:
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
            if stop.broken and stopped == "interrupted":
                log.warning("interrupted inside step %d: the last saved state (step %d) is kept", trainer.step + 1, saved_step)
            elif saved_step != trainer.step and stopped != "failed":
                if stopped == "interrupted":
                    log.warning("interrupted at step %d: saving the training state", trainer.step)
                save_all()
        finally:
            writer.close()
    if stopped == "interrupted":
        raise TrainingStopped(f"training interrupted at step {saved_step}; state saved in {state_path}", stop.signal or signal.SIGINT)
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

"""The train stage's loop: a run folder in the way, a second Ctrl-C inside an iteration, resuming after
validations that the resumed state never saw, a non-finite loss, and a state of another model refused.
Tiny runs of the debug preset on the ``tiny_prepared`` data; validation replaced where only its score
matters."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cyclegan_vc.checkpoint import STATE_KIND, CheckpointError, load_checkpoint, read_metadata
from cyclegan_vc.config import load_config
from cyclegan_vc.training import NonFiniteLoss, Trainer, train
from cyclegan_vc.utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["training.checkpoint_interval=0", "training.milestone_interval=0", "training.validation_interval=0"]


def fake_validation(score):
    """A stand-in for Trainer.validate whose score is ``score(step)`` (no WORLD synthesis)."""

    def validate(self, samples_dir=None, writer=None, options=None):
        return {"score": float(score(self.step))}

    return validate


def state(path) -> dict:
    return load_checkpoint(path, STATE_KIND)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for role, weights in a["networks"].items():
        for name, value in weights.items():
            assert torch.equal(value, b["networks"][role][name]), f"{role}.{name}"
    for role, optimiser in a["optimizers"].items():
        for k, moments in optimiser["state"].items():
            for name, value in moments.items():
                assert torch.equal(value, b["optimizers"][role]["state"][k][name]), f"{role} Adam state {k}.{name}"


def test_a_new_run_into_a_folder_that_holds_one_is_a_user_error(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", fake_validation(lambda step: 1.0))
    run = tmp_path / "run"
    train(tiny_prepared, run, preset="debug", iterations=1, device="cpu", progress=False, overrides=QUIET)
    with pytest.raises(UserError) as refused:
        train(tiny_prepared, run, preset="debug", iterations=1, device="cpu", progress=False)
    message = str(refused.value)
    assert str(run) in message and "--resume" in message and "\n" not in message
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_prepared, tmp_path / "empty", preset="debug", resume=True, device="cpu", progress=False)


def test_a_second_sigint_inside_an_iteration_waits_for_its_end_and_resume_is_exact(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", fake_validation(lambda step: 1.0))
    straight = tmp_path / "straight"
    train(tiny_prepared, straight, preset="debug", iterations=6, device="cpu", progress=False, overrides=QUIET)

    # both signals arrive between the generators' and the discriminators' Adam steps of iteration 3
    calls = []

    def signal_twice(optimizer, args, kwargs):
        calls.append(optimizer)
        if len(calls) == 2 * 4 + 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    handle = register_optimizer_step_pre_hook(signal_twice)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tiny_prepared, run, preset="debug", iterations=6, device="cpu", progress=False, overrides=QUIET)
    finally:
        handle.remove()
    assert len(calls) == 3 * 4  # iteration 3 finished: every optimiser stepped, then the loop stopped
    interrupted = state(run / "checkpoints/state_latest.safetensors")
    assert interrupted["step"] == 3
    assert all(int(s["step"]) == 3 for opt in interrupted["optimizers"].values() for s in opt["state"].values())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back

    train(tiny_prepared, run, resume=True, device="cpu", progress=False)
    assert_same_training_state(state(straight / "checkpoints/state_latest.safetensors"), state(run / "checkpoints/state_latest.safetensors"))


def model_step(path) -> int:
    return int(json.loads(read_metadata(path)["structure"])["step"])


@pytest.mark.parametrize("later_is_better", [True, False], ids=["best-after-the-state", "best-before-the-state"])
def test_resume_drops_the_validations_and_the_best_model_from_after_its_state(tiny_prepared, tmp_path, monkeypatch, later_is_better):
    score = (lambda step: 100.0 - step) if later_is_better else (lambda step: float(step))
    monkeypatch.setattr(Trainer, "validate", fake_validation(score))
    run = tmp_path / "run"
    every_2 = ["training.validation_interval=2", "training.checkpoint_interval=4", "training.milestone_interval=4"]
    train(tiny_prepared, run, preset="debug", iterations=12, device="cpu", progress=False, overrides=every_2)
    assert [h["step"] for h in json.loads((run / "validation.json").read_text())] == [2, 4, 6, 8, 10, 12]
    assert model_step(run / "model_best.safetensors") == (12 if later_is_better else 2)
    # as if the run had died after saving step 8: its last state is step 8's, its history goes on to 12
    (run / "checkpoints/state_00000008.safetensors").replace(run / "checkpoints/state_latest.safetensors")

    seen = {}

    def at_first_step(trainer, losses):
        if not seen:
            seen["history"] = [h["step"] for h in json.loads((run / "validation.json").read_text())]
            seen["best"] = (run / "model_best.safetensors").is_file()
            seen["best_score"] = trainer.best

    summary = train(tiny_prepared, run, resume=True, device="cpu", progress=False, callback=at_first_step)
    assert seen["history"] == [2, 4, 6, 8]
    assert [h["step"] for h in json.loads((run / "validation.json").read_text())] == [2, 4, 6, 8, 10, 12]
    if later_is_better:  # step 12's model_best is gone; the best is chosen again from steps 10 and 12
        assert (seen["best"], seen["best_score"]) == (False, None)
        assert model_step(summary.model_best) == 12 and summary.best_score == 88.0
    else:  # step 2's model_best stands, with its score
        assert (seen["best"], seen["best_score"]) == (True, 2.0)
        assert model_step(summary.model_best) == 2 and summary.best_score == 2.0


def test_a_non_finite_loss_stops_training_with_a_clear_error(tiny_prepared, tmp_path, monkeypatch):
    step = Trainer.train_step

    def diverging(self, *args, **kwargs):
        losses = step(self, *args, **kwargs)
        if self.step == 3:
            losses["cycle"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(Trainer, "train_step", diverging)
    monkeypatch.setattr(Trainer, "validate", fake_validation(lambda step: 1.0))
    run = tmp_path / "run"
    overrides = ["training.log_interval=5", "training.checkpoint_interval=2", "training.milestone_interval=0",
                 "training.validation_interval=0"]
    with pytest.raises(NonFiniteLoss) as failed:
        train(tiny_prepared, run, preset="debug", iterations=10, device="cpu", progress=False, overrides=overrides)
    message = str(failed.value)
    assert "step 3" in message and "cycle nan" in message and "step 2 is kept" in message and "\n" not in message
    assert state(run / "checkpoints/state_latest.safetensors")["step"] == 2  # no state of the diverged run


def test_a_state_of_another_model_configuration_is_refused(tmp_path):
    Trainer(load_config("debug")).save(tmp_path / "state.safetensors")
    for overrides in (["model.generator_kwargs.base_channels=16"], ["model.discriminator_kwargs.head=patch"]):
        with pytest.raises(CheckpointError, match="model config"):
            Trainer(load_config("debug", overrides)).load(tmp_path / "state.safetensors")
    Trainer(load_config("debug", ["training.iterations=40"])).load(tmp_path / "state.safetensors")  # training settings may change

"""Data-parallel training over torchrun processes, tested on the CPU with gloo: two processes with one
crop each are one process with both crops (losses, gradients and weights within fp32 rounding after
3 iterations), a killed two-process run resumes exactly, and rank 0 alone writes files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cyclegan_vc.checkpoint import STATE_KIND, load_checkpoint

# PYTHONFAULTHANDLER: a rank that dies of a signal prints where each of its threads was
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONFAULTHANDLER": "1"}
for _name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_name, None)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """Two ranks of ``args`` under torchrun. Tried again (3 tries in all) only when a rank aborted after
    its Python program had ended ("terminate called without an active exception" in C++ teardown,
    no Python frame left): a known, rare abort of gloo processes at exit, not a failure of the run;
    any other failure, or this one three times, fails the test."""
    for _ in range(3):
        done = subprocess.run([*TORCHRUN, *args], env=ENV, capture_output=True, text=True, timeout=600)
        late_abort = "terminate called without an active exception" in done.stderr and "<no Python frame>" in done.stderr
        if done.returncode == 0 or not late_abort:
            return done
    return done


SAME_CROPS = textwrap.dedent(
    """
    import sys
    import torch
    from cyclegan_vc.config import load_config
    from cyclegan_vc.training import CropSampler, MaskSampler, Trainer, TrainingData

    data = TrainingData.from_prepared(sys.argv[1], eval_pairs=0)
    config = load_config(sys.argv[3], ["training.identity_steps=2"])
    trainer = Trainer(config, data, device="cpu")
    crops = CropSampler(data.mceps, config.training.crop_frames, 2, seed=123)  # one batch of 2 for every run
    masks = MaskSampler(config.training.mask_frames, seed=5) if config.training.mask_frames else None
    rank, size = trainer.world.rank, trainer.world.size
    share = 2 // size
    losses = []
    for _ in range(3):
        x, y = crops.sample("A"), crops.sample("B")
        mine = slice(rank * share, (rank + 1) * share)
        if masks is None:
            out = trainer.train_step(x[mine], y[mine])
        else:
            ma, mb = masks.sample(2, x.shape[-1]), masks.sample(2, y.shape[-1])
            out = trainer.train_step(x[mine], y[mine], ma[mine], mb[mine])
        losses.append({k: float(v) for k, v in out.items()})
        if not losses[1:]:  # the first iteration's gradients: both runs from the same weights
            grads = {r: [p.grad.clone() for p in net.parameters()] for r, net in trainer.networks.items()}
    if trainer.world.main:
        torch.save({
            "losses": losses,
            "weights": {r: {k: v.clone() for k, v in net.state_dict().items()} for r, net in trainer.networks.items()},
            "grads": grads,
        }, sys.argv[2])
    """
)


@pytest.mark.parametrize("preset", ["debug", "mask-small"])
def test_two_processes_of_one_crop_are_one_process_of_two(tiny_prepared, tmp_path, preset):
    script = tmp_path / "same_crops.py"
    script.write_text(SAME_CROPS)
    if preset == "mask-small":  # the successors' objectives (two-step, filling in frames), at a small width
        preset_file = tmp_path / "tiny-mask.yaml"
        preset_file.write_text(
            "model:\n  generator: maskcyclegan_vc\n  generator_kwargs: {base_channels: 8, residual_channels: 16, n_residual_blocks: 2}\n"
            "  discriminator: patchgan\n  discriminator_kwargs: {base_channels: 8}\n"
            "training:\n  batch_size: 1\n  crop_frames: 32\n  two_step_adversarial: true\n  mask_frames: 8\n"
            "  iterations: 10\n  lr_decay_start: 5\n"
        )
        preset = str(preset_file)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    done = subprocess.run([sys.executable, str(script), str(tiny_prepared), str(one), preset], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _torchrun([str(script), str(tiny_prepared), str(two), preset])
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    for step, (la, lb) in enumerate(zip(a["losses"], b["losses"])):
        assert la.keys() == lb.keys()
        for key in la:
            assert lb[key] == pytest.approx(la[key], rel=1e-5, abs=1e-6), (step, key)
    worst_weight = worst_grad = 0.0
    for role in a["weights"]:
        # a parameter whose exact gradient is zero (a bias before instance normalisation) gets rounding noise,
        # which Adam normalises into steps of the learning rate (2e-4): 3 of them bound the difference
        for name, w in a["weights"][role].items():
            torch.testing.assert_close(b["weights"][role][name], w, rtol=0, atol=3 * 2 * 2e-4)
            worst_weight = max(worst_weight, float((b["weights"][role][name] - w).abs().max()))
        # the mean of two gradients is the batch's: per network (a bias before instance normalisation has an
        # exact gradient of zero, so its own relative error is that of rounding noise against noise)
        ga, gb = (torch.cat([g.reshape(-1) for g in run["grads"][role]]) for run in (a, b))
        error = float((gb - ga).norm() / ga.norm())
        assert error < 1e-4, (role, error)
        worst_grad = max(worst_grad, error)
    print(f"{preset}: first gradients within {worst_grad:.1e} (relative norm), weights after 3 iterations within {worst_weight:.1e}")


TRAIN = ["-m", "cyclegan_vc", "train", "--preset", "debug", "--iterations", "16", "--device", "cpu",
         "--set", "training.checkpoint_interval=2", "--set", "training.milestone_interval=0",
         "--set", "training.batch_size=1"]


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts)


def test_a_killed_two_process_run_resumes_exactly_and_rank_0_alone_writes(tiny_prepared, tmp_path):
    base = tmp_path / "base"
    started = time.monotonic()
    done = subprocess.run([*TORCHRUN, *TRAIN, "--data", str(tiny_prepared), "--run-dir", str(base)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(base / "checkpoints" / "state_latest.safetensors", STATE_KIND)
    assert len(state["ranks"]) == 2  # each rank's crops, for an exact resume of each
    assert not state["ranks"][0]["sampler"]["generator"].equal(state["ranks"][1]["sampler"]["generator"])
    assert len(list((base / "tensorboard").rglob("events.*"))) == 1

    single = tmp_path / "single"
    done = subprocess.run([sys.executable, *TRAIN, "--data", str(tiny_prepared), "--run-dir", str(single)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files(base) == _files(single)  # the same files as one process writes: none twice, none per rank

    run = tmp_path / "killed"
    proc = subprocess.Popen([*TORCHRUN, *TRAIN, "--data", str(tiny_prepared), "--run-dir", str(run)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(random.Random(6).uniform(0.5, 0.8) * duration)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks at once, as a lost machine
    proc.communicate()
    resume = ["--resume"] if (run / "checkpoints" / "state_latest.safetensors").is_file() else []
    done = subprocess.run([*TORCHRUN, *TRAIN, "--data", str(tiny_prepared), "--run-dir", str(run), *resume], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    want, got = load_file(str(base / "model_latest.safetensors")), load_file(str(run / "model_latest.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        assert got[name].equal(want[name]), name

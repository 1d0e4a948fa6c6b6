"""Processes killed from outside: ``kill -9`` at random moments of ``train`` (each time resumed; the
final weights bit-identical to an uninterrupted run), no worker left behind after SIGKILL or SIGTERM
of ``prepare`` and ``convert --jobs 2`` (the process table is read), the next run cleans what the
killed one was writing, and Ctrl-C stops a multi-worker ``prepare`` promptly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from safetensors.torch import load_file

from cyclegan_vc.checkpoint import STATE_KIND, load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
CLI = [sys.executable, "-m", "cyclegan_vc"]
TRAIN_IDS = (100001, 100002, 100003, 100004, 100005, 100006, 100007, 100008)


@pytest.fixture(scope="module")
def corpus(training_corpus) -> Path:
    """Eight real training files per speaker (SF1, TM3)."""
    return training_corpus("kill_corpus", TRAIN_IDS)


def _children() -> dict[int, list[int]]:
    """ppid -> pids of the live (not zombie) processes of this machine, from /proc."""
    table: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            table.setdefault(int(ppid), []).append(int(entry.name))
    return table


def _descendants(pid: int) -> set[int]:
    table, found, todo = _children(), set(), [pid]
    while todo:
        for child in table.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    live = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.add(pid)
    return live


def _wait_for(condition, what: str, proc: subprocess.Popen, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit  # a guard against a hang, not a speed limit
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"no {what} within {limit:.0f} s"
        time.sleep(0.05)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


# -- kill -9 during training ---------------------------------------------------------------------------
TRAIN = ["train", "--preset", "debug", "--iterations", "40", "--device", "cpu",
         "--set", "training.checkpoint_interval=2", "--set", "training.milestone_interval=0"]


def _weights(run: Path) -> tuple[int, dict]:
    state = load_checkpoint(run / "checkpoints" / "state_latest.safetensors", STATE_KIND)
    return int(state["step"]), load_file(str(run / "model_latest.safetensors"))


def test_kill_9_at_random_moments_of_train_then_resume_gives_the_uninterrupted_weights(tiny_prepared, tmp_path):
    base = tmp_path / "base"
    started = time.monotonic()
    subprocess.run([*CLI, *TRAIN, "--data", str(tiny_prepared), "--run", str(base)], env=ENV, check=True,
                   capture_output=True, timeout=600)
    duration = time.monotonic() - started
    run, rng, resumed_at = tmp_path / "killed", random.Random(20261206), []
    for _ in range(3):
        resume = ["--resume"] if (run / "checkpoints" / "state_latest.safetensors").is_file() else []
        proc = subprocess.Popen([*CLI, *TRAIN, "--data", str(tiny_prepared), "--run", str(run), *resume], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.4, 0.9) * duration)  # import, data loading, steps, saves: anywhere
        proc.kill()
        proc.communicate()
        state = run / "checkpoints" / "state_latest.safetensors"
        if state.is_file():  # never torn: a complete, verified checkpoint or none
            resumed_at.append(int(load_checkpoint(state, STATE_KIND)["step"]))
    assert resumed_at == sorted(resumed_at), resumed_at  # a kill never loses a saved state
    done = subprocess.run([*CLI, *TRAIN, "--data", str(tiny_prepared), "--run", str(run), "--resume"], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained to step 40" in done.stdout
    (base_step, want), (step, got) = _weights(base), _weights(run)
    assert want.keys() == got.keys() and base_step == step == 40
    for name in want:
        assert got[name].equal(want[name]), name
    assert not _temporaries(run)
    print(f"states at the kills: {resumed_at}; uninterrupted run {duration:.1f} s")


# -- no orphans ----------------------------------------------------------------------------------------
def _start_and_kill(command: list[str], sig: int, ready) -> tuple[subprocess.Popen, set[int]]:
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()

    def spawned() -> bool:
        workers.update(_descendants(proc.pid))
        return len(workers) >= 2 and ready()  # two workers (and the resource tracker)

    _wait_for(spawned, "worker processes", proc)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc, workers


def _assert_no_orphans(workers: set[int]) -> None:
    deadline = time.monotonic() + 20  # workers look at their parent twice a second
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(workers), f"orphaned processes: {sorted(_alive(workers))}"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_prepare_leaves_no_worker_and_the_next_run_completes(corpus, tmp_path, sig):
    out = tmp_path / "prepared"
    command = [*CLI, "prepare", "--source", str(corpus / "SF1"), "--target", str(corpus / "TM3"), "--out", str(out), "--jobs", "2"]
    proc, workers = _start_and_kill(command, sig, lambda: any((out / "cache").glob("*.npz")))
    assert proc.returncode == -sig
    _assert_no_orphans(workers)
    assert not (out / "manifest.json").exists()
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped 0" in again.stdout, again.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert [len(manifest["speakers"][r]["train"]) for r in "AB"] == [len(TRAIN_IDS)] * 2
    assert not _temporaries(out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_convert_with_workers_leaves_no_worker_nor_partial_output(corpus, tiny_model, tmp_path, sig):
    out = tmp_path / "converted"
    command = [*CLI, "convert", str(corpus / "SF1"), "--model", str(tiny_model), "--out", str(out), "--jobs", "2",
               "--f0", "dio"]
    proc, workers = _start_and_kill(command, sig, lambda: True)
    assert proc.returncode == -sig
    _assert_no_orphans(workers)
    for wav in out.rglob("*.wav"):  # what is there is whole
        assert sf.info(str(wav)).frames > 0
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.wav")) == [f"{n}.wav" for n in TRAIN_IDS]
    assert not _temporaries(out)


# -- Ctrl-C --------------------------------------------------------------------------------------------
def test_ctrl_c_stops_a_multi_worker_prepare_after_the_files_in_progress(corpus, tmp_path):
    out = tmp_path / "prepared"
    proc = subprocess.Popen(
        [*CLI, "prepare", "--source", str(corpus / "SF1"), "--target", str(corpus / "TM3"), "--out", str(out), "--jobs", "2"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    workers: set[int] = set()

    def started() -> bool:
        workers.update(_descendants(proc.pid))
        return any((out / "cache").glob("*.npz"))

    _wait_for(started, "a first feature file", proc)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = proc.communicate(timeout=120)
    analysed = len(list((out / "cache").glob("*.npz")))
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert analysed < 2 * len(TRAIN_IDS)  # the files not yet started were not analysed
    assert not (out / "manifest.json").exists()
    _assert_no_orphans(workers)
    print(f"Ctrl-C after the first file: {analysed} of {2 * len(TRAIN_IDS)} analysed")

"""Faults of the machine and damaged files in ``prepare``: a full disk stops the run with one line
and writes no manifest (nothing skipped silently), a damaged cache file is analysed again, and a
skipped recording makes the exit status 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf

from cyclegan_vc import cli
from cyclegan_vc.prepare import prepare

TRAIN_IDS = (100082, 100158, 100086, 100140)


@pytest.fixture(scope="module")
def corpus(training_corpus) -> Path:
    return training_corpus("faults_corpus", TRAIN_IDS)


@contextmanager
def _tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``mount`` (skipped where that needs a root this process is not)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    (disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - leave))


@pytest.fixture
def nearly_full_disk(tmp_path):
    """A 1 MiB tmpfs with about 40 KiB left: room for a feature file or two, not for all of them."""
    with _tmpfs(tmp_path / "disk", "1m") as mount:
        _fill(mount, 40 * 1024)
        yield mount


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_full_disk_stops_prepare_with_one_line_and_no_manifest(corpus, nearly_full_disk, capsys, jobs):
    out = nearly_full_disk / "prepared"
    code = cli.main(["prepare", "--source", str(corpus / "SF1"), "--target", str(corpus / "TM3"), "--out", str(out),
                     "--f0", "dio", "--jobs", jobs])
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("analysing")]
    assert code == 1, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("cyclegan-vc prepare: failed: cannot write the feature cache"), err
    assert "No space left on device" in lines[0]
    assert not (out / "manifest.json").exists() and not (out / "stats.json").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left behind


def test_a_damaged_cache_file_is_analysed_again(corpus, tmp_path, caplog):
    out = tmp_path / "prepared"
    first = prepare(corpus / "SF1", corpus / "TM3", out, f0="dio", jobs=1, progress=False)
    entry = first["speakers"]["A"]["train"][1]
    npz = out / entry["features"]
    good = dict(np.load(npz))
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # a torn copy
    again = prepare(corpus / "SF1", corpus / "TM3", out, f0="dio", jobs=1, progress=False)
    assert "damaged cache file" in caplog.text and str(npz) in caplog.text
    assert again["speakers"] == first["speakers"] and again["skipped"] == []
    for key, value in np.load(npz).items():
        np.testing.assert_array_equal(value, good[key])


def test_prepare_exits_1_when_a_recording_is_skipped_and_lists_it(corpus, tmp_path, capsys):
    source = tmp_path / "SF1"
    shutil.copytree(corpus / "SF1", source)
    (source / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    code = cli.main(["prepare", "--source", str(source), "--target", str(corpus / "TM3"), "--out", str(tmp_path / "p"),
                     "--f0", "dio", "--jobs", "1"])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"skipped {source / 'broken.wav'}" in printed
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert [s["audio"] for s in manifest["skipped"]] == [str((source / "broken.wav").resolve())]
    assert os.access(tmp_path / "p" / "manifest.json", os.R_OK)


def test_dangling_symlinks_and_symlink_loops_are_skipped_and_reported_not_fatal(corpus, tmp_path):
    source = tmp_path / "SF1"
    shutil.copytree(corpus / "SF1", source)
    (source / "dangling.wav").symlink_to(tmp_path / "nowhere.wav")
    (source / "loop1.wav").symlink_to(source / "loop2.wav")
    (source / "loop2.wav").symlink_to(source / "loop1.wav")
    manifest = prepare(source, corpus / "TM3", tmp_path / "p", f0="dio", jobs=1, progress=False)
    assert sorted(Path(s["audio"]).name for s in manifest["skipped"]) == ["dangling.wav", "loop1.wav", "loop2.wav"]
    assert all(s["reason"].startswith("cannot read") for s in manifest["skipped"])
    assert len(manifest["speakers"]["A"]["train"]) == len(TRAIN_IDS)


@pytest.mark.parametrize("extra, message", [
    (["--target", "SAME"], "are the same folder"),
    (["--target", "TM3", "--source-eval", "SF1"], "source_eval given alone"),
])
def test_folders_that_cannot_make_a_pair_are_refused(corpus, tmp_path, capsys, extra, message):
    extra = [str(corpus / "SF1") if a == "SAME" else str(corpus / a) if a in ("TM3", "SF1") else a for a in extra]
    code = cli.main(["prepare", "--source", str(corpus / "SF1"), "--out", str(tmp_path / "p"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("minutes", ["-1", "0", "nan", "inf", "soon"])
def test_a_time_budget_must_be_a_positive_number(tmp_path, capsys, minutes):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", str(tmp_path), "--run", str(tmp_path / "r"), "--minutes", minutes])
    assert exit_.value.code == 2 and "expected a number > 0" in capsys.readouterr().err


# -- a full disk in train and convert ------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs."""
    with _tmpfs(tmp_path / "small", "16m") as mount:
        yield mount


def _failed_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"cyclegan-vc {command}:")]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    return lines[0]


def test_a_full_disk_during_train_stops_it_with_one_line_and_keeps_the_last_state(tiny_prepared, small_disk, capsys):
    from cyclegan_vc.checkpoint import STATE_KIND, load_checkpoint

    run = small_disk / "run"
    args = ["train", "--data", str(tiny_prepared), "--run", str(run), "--preset", "debug", "--iterations", "4",
            "--device", "cpu", "--set", "training.checkpoint_interval=1", "--set", "training.milestone_interval=0"]
    assert cli.main(args) == 0
    capsys.readouterr()
    used = sum(p.stat().st_size for p in (run / "checkpoints").iterdir())
    _fill(small_disk, used // 2)  # room for less than one more state
    code = cli.main([*args[:8], "8", *args[9:], "--resume"])
    line = _failed_line(capsys, "train")
    assert code == 1
    assert "no space left on the disk" in line.lower() and str(run) in line, line
    assert int(load_checkpoint(run / "checkpoints" / "state_latest.safetensors", STATE_KIND)["step"]) >= 4
    assert not [p for p in run.rglob(".*") if ".tmp" in p.name]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_full_disk_during_convert_stops_the_batch_with_one_line(vcc_file, tiny_model, small_disk, tmp_path, capsys, jobs):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for n in (100001, 100002, 100003, 100004):
        shutil.copy(vcc_file("SF1", n), inputs / f"{n}.flac")
    out = small_disk / "out"
    out.mkdir()
    _fill(small_disk, 40 * 1024)  # room for about one converted file
    code = cli.main(["convert", str(inputs), "--model", str(tiny_model), "--out", str(out), "--jobs", jobs, "--f0", "dio"])
    line = _failed_line(capsys, "convert")
    assert code == 1
    assert "no space left on the disk" in line.lower() and str(out) in line, line
    for wav in out.glob("*.wav"):  # what was written is whole
        assert sf.info(str(wav)).frames > 0
    assert not [p for p in out.rglob(".*")]


# -- what a killed process leaves, file modes, resuming ---------------------------------------------------
def test_temporaries_of_killed_processes_are_removed_and_others_kept(tmp_path):
    from cyclegan_vc.utils import _host, atomic_write_bytes, remove_stale_temporaries

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".model.safetensors.{_host()}-{dead.pid}.k3j4h5g6.tmp"
    live = tmp_path / f".model.safetensors.{_host()}-{os.getpid()}.a1b2c3d4.tmp"
    other_host = tmp_path / f".model.safetensors.elsewhere-{dead.pid}.a1b2c3d4.tmp"
    for path in (stale, live, other_host):
        path.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "model.safetensors", b"whole")
    assert not stale.exists() and live.exists() and other_host.exists()
    assert remove_stale_temporaries(tmp_path) == []
    assert (tmp_path / "model.safetensors").read_bytes() == b"whole"


def test_every_file_a_run_writes_has_the_umask_mode(tiny_prepared, tmp_path):
    from cyclegan_vc.training import train

    old = os.umask(0o022)
    try:
        train(tiny_prepared, tmp_path / "run", preset="debug", iterations=2, device="cpu", progress=False,
              overrides=["training.milestone_interval=1"])
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and "tensorboard" not in p.parts]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}, {p.name: oct(p.stat().st_mode & 0o777) for p in files}


def test_resume_on_other_prepared_data_is_refused(tiny_prepared, tiny_model, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_model.parent, run)
    other = prepare(corpus / "TM3", corpus / "SF1", tmp_path / "other", f0="dio", jobs=1, progress=False)
    assert other["speakers"]["A"]["name"] == "TM3"
    before = (run / "data.json").read_text()
    code = cli.main(["train", "--data", str(tmp_path / "other"), "--run", str(run), "--resume", "--iterations", "4", "--device", "cpu"])
    assert code == 2
    line = _failed_line(capsys, "train")
    assert str(tiny_prepared.resolve()) in line and "--data" in line, line
    assert (run / "data.json").read_text() == before


def test_resuming_a_finished_run_adds_no_validation(tiny_prepared, tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_model.parent, run)
    before = json.loads((run / "validation.json").read_text())
    assert cli.main(["train", "--data", str(tiny_prepared), "--run", str(run), "--resume", "--device", "cpu"]) == 0
    assert json.loads((run / "validation.json").read_text()) == before
    assert "preset" not in capsys.readouterr().err  # no preset was given, none is said to be ignored


def test_the_same_input_given_twice_is_converted_once(vcc_file, tiny_model, tmp_path, capsys):
    audio = tmp_path / "in" / "a.flac"
    audio.parent.mkdir()
    shutil.copy(vcc_file("SF1", 100002), audio)
    code = cli.main(["convert", str(audio), str(audio.parent), "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                     "--f0", "dio"])
    assert code == 0, capsys.readouterr()
    assert "converted 1 file(s)" in capsys.readouterr().out

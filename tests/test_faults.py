"""Faults of the machine and damaged files in ``prepare``: a full disk stops the run with one line
and writes no manifest (nothing skipped silently), a damaged cache file is analysed again, and a
skipped recording makes the exit status 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cyclegan_vc import cli
from cyclegan_vc.prepare import prepare

TRAIN_IDS = (100082, 100158, 100086, 100140)


@pytest.fixture(scope="module")
def corpus(vcc_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_corpus")
    for spk in ("SF1", "TM3"):
        (root / spk).mkdir()
        for n in TRAIN_IDS:
            shutil.copy(vcc_root / "vcc2016_training" / spk / f"{n}.flac", root / spk / f"{n}.flac")
    return root


@pytest.fixture
def nearly_full_disk(tmp_path):
    """A 1 MiB tmpfs with about 40 KiB left: room for a feature file or two, not for all of them."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * max(0, free - 40 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


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

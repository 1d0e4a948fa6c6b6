"""Damaged files and hostile arguments on the command line: each is refused with one line that names
the file (or the flag) and says what is wrong, with status 2 (or 1 for the machine's faults); never a
traceback, and nothing written on the way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cyclegan_vc import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(capsys, command: str) -> str:
    """The error: one line, or one line and the indented list of a config's invalid keys."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert "Traceback" not in err and lines and all(line.startswith("  ") for line in lines[1:]), err[-3000:]
    assert lines[0].startswith(f"cyclegan-vc {command}: "), lines[0]
    return " ".join(line.strip() for line in lines)


@pytest.fixture(scope="module")
def run(tiny_model) -> Path:
    return tiny_model.parent


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path, at: float = 0.8) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def _train_resume(data: Path, run_copy: Path) -> list[str]:
    return ["train", "--data", str(data), "--run", str(run_copy), "--resume", "--iterations", "4", "--device", "cpu"]


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "bit-flipped"])
def test_a_damaged_training_state_is_refused_on_resume(tiny_prepared, run, tmp_path, capsys, damage):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = copy / "checkpoints" / "state_latest.safetensors"
    damage(state)
    assert cli.main(_train_resume(tiny_prepared, copy)) == 2
    assert str(state) in _one_line(capsys, "train")


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "bit-flipped"])
def test_a_damaged_model_is_refused_by_convert(vcc_file, tiny_model, tmp_path, capsys, damage):
    model = tmp_path / "model.safetensors"
    shutil.copy(tiny_model, model)
    damage(model)
    code = cli.main(["convert", str(vcc_file("SF1", 100002)), "--model", str(model), "--out", str(tmp_path / "out")])
    assert code == 2
    assert str(model) in _one_line(capsys, "convert")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_training_state_given_as_a_model_is_refused(vcc_file, run, tmp_path, capsys):
    state = run / "checkpoints" / "state_latest.safetensors"
    code = cli.main(["convert", str(vcc_file("SF1", 100002)), "--model", str(state), "--out", str(tmp_path / "out")])
    assert code == 2
    assert str(state) in _one_line(capsys, "convert")


def _damage_manifest(prepared: Path) -> Path:
    _truncate(prepared / "manifest.json")
    return prepared / "manifest.json"


def _empty_manifest(prepared: Path) -> Path:
    (prepared / "manifest.json").write_text(json.dumps({"format_version": 1}))
    return prepared / "manifest.json"


def _damage_stats(prepared: Path) -> Path:
    (prepared / "stats.json").write_text(json.dumps({"A": {"mcep_mean": [0.0]}}))
    return prepared / "stats.json"


def _binary_stats(prepared: Path) -> Path:
    (prepared / "stats.json").write_bytes(b"\xff\xfe\x00garbage")
    return prepared / "stats.json"


def _damage_feature_file(prepared: Path) -> Path:
    manifest = json.loads((prepared / "manifest.json").read_text())
    path = prepared / manifest["speakers"]["A"]["train"][0]["features"]
    _truncate(path)
    return path


@pytest.mark.parametrize("damage", [_damage_manifest, _empty_manifest, _damage_stats, _binary_stats, _damage_feature_file],
                         ids=["manifest-truncated", "manifest-empty", "stats-keys", "stats-binary", "feature-file"])
def test_damaged_prepared_data_is_refused_by_train_naming_the_file(tiny_prepared, tmp_path, capsys, damage):
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, prepared, symlinks=False)
    if (prepared / "cache").is_symlink():
        raise AssertionError("the fixture's cache must be copied, not shared")
    damaged = damage(prepared)
    code = cli.main(["train", "--data", str(prepared), "--run", str(tmp_path / "run"), "--preset", "debug",
                     "--iterations", "2", "--device", "cpu"])
    assert code == 2
    assert str(damaged) in _one_line(capsys, "train")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("text, message", [
    ("model: [unclosed\n", "yaml"),
    ("training:\n  batch_size: many\n", "batch_size"),
    ("training:\n  iterations: -5\n", "iterations"),
    ("training:\n  no_such_key: 1\n", "no_such_key"),
    ("model:\n  generator: no_such_network\n", "no_such_network"),
    ("- a list\n- not a mapping\n", "mapping"),
], ids=["invalid-yaml", "wrong-type", "negative", "unknown-key", "unknown-network", "not-a-mapping"])
def test_a_bad_config_file_is_one_line_naming_it(tiny_prepared, tmp_path, capsys, text, message):
    config = tmp_path / "mine.yaml"
    config.write_text(text)
    code = cli.main(["train", "--data", str(tiny_prepared), "--run", str(tmp_path / "run"), "--preset", str(config),
                     "--device", "cpu"])
    line = _one_line(capsys, "train")
    assert code == 2
    assert str(config) in line and message.lower() in line.lower(), line


@pytest.mark.parametrize("override", [
    "training.batch_size=0", "training.generator_lr=-1", "training.crop_frames=0", "training.iterations=1e99",
    "training.cycle_weight=nan", "model.generator_kwargs.base_channels=-8",
    "model.discriminator_kwargs.kernel_size=[3]", "model.generator_kwargs.n_residual_blocks=two",
])
def test_zero_negative_and_huge_values_are_refused(tiny_prepared, tmp_path, capsys, override):
    code = cli.main(["train", "--data", str(tiny_prepared), "--run", str(tmp_path / "run"), "--preset", "debug",
                     "--device", "cpu", "--set", override])
    line = _one_line(capsys, "train")
    assert code == 2
    assert override.split("=")[0].rsplit(".", 1)[1] in line, line


@pytest.mark.parametrize("args, flag", [
    (["train", "--iterations", "0"], "--iterations"),
    (["train", "--iterations", "-3"], "--iterations"),
    (["convert", "x.wav", "--model", "m", "--jobs", "0"], "--jobs"),
    (["convert", "x.wav", "--model", "m", "--smooth", "-1"], "--smooth"),
])
def test_bad_numbers_on_the_command_line_are_argparse_errors(tmp_path, capsys, args, flag):
    if args[0] == "train":
        args = [*args, "--data", str(tmp_path), "--run", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2 and flag in capsys.readouterr().err


def test_files_where_folders_are_expected(tiny_prepared, vcc_file, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    audio = str(vcc_file("SF1", 100002))
    cases = [
        (["prepare", "--source", str(a_file), "--target", str(tmp_path), "--out", str(tmp_path / "p")], "prepare"),
        (["prepare", "--source", str(tiny_prepared.parent / "train" / "SF1"), "--target",
          str(tiny_prepared.parent / "train" / "TM3"), "--out", str(a_file)], "prepare"),
        (["train", "--data", str(a_file), "--run", str(tmp_path / "r"), "--preset", "debug"], "train"),
        (["train", "--data", str(tiny_prepared), "--run", str(a_file), "--preset", "debug"], "train"),
        (["convert", audio, "--model", str(tmp_path), "--out", str(tmp_path / "o")], "convert"),
        (["convert", audio, "--model", str(a_file), "--out", str(tmp_path / "o")], "convert"),
    ]
    for args, command in cases:
        assert cli.main(args) == 2, args
        line = _one_line(capsys, command)
        assert str(a_file) in line or str(tmp_path) in line, line
    assert a_file.read_text() == "x"

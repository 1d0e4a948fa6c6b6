"""The command line's success paths (prepare, train, make-demo-corpus) and how it reports what goes
wrong: a user's mistake in one line with status 2, a fault of the machine with status 1, a fault of
the toolkit as an internal error, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cyclegan_vc import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(capsys, command: str, kind: str = "error") -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"cyclegan-vc {command}: {kind}: "), err
    return err


@pytest.fixture(scope="module")
def corpus(vcc_root, tmp_path_factory) -> Path:
    """Two short training recordings per speaker (SF1, TM3) and one parallel evaluation sentence."""
    root = tmp_path_factory.mktemp("cli_corpus")
    for spk in ("SF1", "TM3"):
        for split, folder, numbers in (("train", "vcc2016_training", (100082, 100158)), ("eval", "evaluation_all", (200027,))):
            (root / split / spk).mkdir(parents=True)
            for n in numbers:
                shutil.copy(vcc_root / folder / spk / f"{n}.flac", root / split / spk / f"{n}.flac")
    return root


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cli_prepared") / "prepared"
    code = cli.main([
        "prepare", "--source", str(corpus / "train" / "SF1"), "--target", str(corpus / "train" / "TM3"),
        "--source-eval", str(corpus / "eval" / "SF1"), "--target-eval", str(corpus / "eval" / "TM3"),
        "--out", str(out), "--f0", "dio", "--jobs", "1",
    ])
    assert code == 0
    return out


def test_prepare_writes_the_manifest_and_prints_what_it_found(corpus, tmp_path, capsys):
    out = tmp_path / "prepared"
    code = cli.main([
        "prepare", "--source", str(corpus / "train" / "SF1"), "--target", str(corpus / "train" / "TM3"),
        "--out", str(out), "--f0", "dio", "--jobs", "1", "--mcep-dim", "36",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith(f"prepared data in {out}")
    assert "SF1" in printed and "TM3" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [len(manifest["speakers"][role]["train"]) for role in ("A", "B")] == [2, 2]
    assert manifest["features"]["mcep_dim"] == 36


def test_train_runs_prints_the_model_and_refuses_to_overwrite_a_run(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(prepared), "--run", str(run), "--preset", "debug", "--iterations", "2",
            "--device", "cpu", "--set", "training.validation_interval=0"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip() == f"trained to step 2 (all iterations done); model: {run / 'model_latest.safetensors'}"
    assert (run / "model_latest.safetensors").is_file()
    before = sorted(p.name for p in run.rglob("*"))
    assert cli.main(args) == 2  # the folder holds a run: a user's mistake, told in one line
    err = _one_line_error(capsys, "train")
    assert str(run) in err
    assert sorted(p.name for p in run.rglob("*")) == before


@pytest.mark.parametrize("override, message", [
    ("training.no_such_key=1", "no_such_key"),
    ("training.batch_size", "must look like section.key=value"),
    ("training.batch_size=many", "batch_size"),
    ("training.lambda_cycle=-1", "lambda_cycle"),
])
def test_a_bad_override_is_one_line_naming_the_key(prepared, tmp_path, capsys, override, message):
    code = cli.main(["train", "--data", str(prepared), "--run", str(tmp_path / "run"), "--preset", "debug",
                     "--iterations", "1", "--device", "cpu", "--set", override])
    assert code == 2
    assert message in _one_line_error(capsys, "train")
    assert not (tmp_path / "run" / "state_latest.safetensors").exists()


def test_an_unknown_preset_and_a_missing_data_folder_are_user_errors(prepared, tmp_path, capsys):
    assert cli.main(["train", "--data", str(prepared), "--run", str(tmp_path / "r"), "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in _one_line_error(capsys, "train")
    assert cli.main(["train", "--data", str(tmp_path / "nowhere"), "--run", str(tmp_path / "r2"), "--preset", "debug"]) == 2
    assert "nowhere" in _one_line_error(capsys, "train")


def test_make_demo_corpus_renders_the_asked_number_of_sentences(tmp_path, capsys):
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite; make setup installs it)")
    dest = tmp_path / "corpus"
    assert cli.main(["make-demo-corpus", "--dest", str(dest), "--train-sentences", "2", "--eval-sentences", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"demo corpus written to {dest}")
    voices = list(json.loads((dest / "corpus.json").read_text())["voices"].values())
    assert len(voices) == 2
    for voice in voices:
        assert len(list((dest / "training" / voice).glob("*.wav"))) == 2
        assert len(list((dest / "evaluation" / voice).glob("*.wav"))) == 1


def test_a_fault_of_the_toolkit_is_an_internal_error_with_status_1(corpus, tmp_path, capsys, monkeypatch):
    """A RuntimeError from inside is not the user's input: status 1, named as internal, the traceback
    one --verbose away."""
    import cyclegan_vc.prepare as prepare

    def broken(*args, **kwargs):
        raise RuntimeError("an invariant broke")

    monkeypatch.setattr(prepare, "prepare", broken)
    args = ["prepare", "--source", str(corpus / "train" / "SF1"), "--target", str(corpus / "train" / "TM3"),
            "--out", str(tmp_path / "p")]
    assert cli.main(args) == 1
    err = _one_line_error(capsys, "prepare", "internal error")
    assert "RuntimeError: an invariant broke" in err and "--verbose" in err

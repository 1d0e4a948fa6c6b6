"""The evaluate stage, the demo and the recipe end to end, on tiny budgets.

A debug-size model is trained for a few iterations on the session's ``tiny_prepared`` data (real
VCC 2016 speech, SF1 -> TM3); it converts badly, which is fine: these tests check that every system
and every file is produced and that the numbers are consistent, not that the model is good.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cyclegan_vc import cli
from cyclegan_vc.conversion import VoiceConverter
from cyclegan_vc.evaluation import evaluate, training_references
from cyclegan_vc.metrics import SYSTEMS
from cyclegan_vc.options import ConversionOptions
from cyclegan_vc.training import train

EVAL_IDS = (200027, 200035)


@pytest.fixture(scope="module")
def tiny_run(tiny_prepared, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("eval_run") / "run"
    train(tiny_prepared, run, preset="debug", iterations=2, progress=False,
          overrides=["training.validation_interval=0"])
    return run


@pytest.fixture(scope="module")
def eval_dirs(vcc_root, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval_set")
    for spk in ("SF1", "TM3"):
        (root / spk).mkdir()
        for n in EVAL_IDS:
            shutil.copy(vcc_root / "evaluation_all" / spk / f"{n}.flac", root / spk / f"{n}.flac")
    return root / "SF1", root / "TM3"


def test_training_references_come_from_the_runs_prepared_data(tiny_run, tiny_prepared):
    refs = training_references(tiny_run)
    manifest = json.loads((tiny_prepared / "manifest.json").read_text())
    for role in ("A", "B"):
        assert refs[role] == [Path(e["audio"]) for e in manifest["speakers"][role]["train"]]


def test_training_references_refuse_a_manifest_of_another_format(tiny_run, tmp_path, caplog):
    """Prepared data of another format is not read as if it were this one (its layout may differ):
    no references, and a warning that names the format, instead of a KeyError or wrong files."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps({"format_version": 999, "roles": {}}))
    (run / "data.json").write_text(json.dumps({"prepared": str(prepared)}))
    with caplog.at_level("WARNING"):
        assert training_references(run) == {"A": [], "B": []}
    assert "manifest format 999" in caplog.text



def test_evaluate_cli_writes_every_file_and_scores_every_system(tiny_run, eval_dirs, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main([
        "evaluate", "--model", str(tiny_run), "--source-eval", str(eval_dirs[0]),
        "--target-eval", str(eval_dirs[1]), "--out", str(out), "--examples", "1", "--device", "cpu",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "mean_variance" in printed
    for name in ("metrics.json", "summary.md", "report.html"):
        assert (out / name).stat().st_size > 0
    for direction in ("A2B", "B2A"):
        assert sorted(p.name for p in (out / "converted" / direction).iterdir()) == [f"{n}.wav" for n in EVAL_IDS]
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["conventions"]) >= {"MCD", "F0 RMSE", "Speaker similarity", "DNSMOS", "Conversion"}
    assert "from the generator, as in the paper" in data["conventions"]["Conversion"]
    assert data["meta"]["energy"] == "generator" and data["meta"]["smooth"] == 0
    assert data["meta"]["references"] == {"A": 2, "B": 2}  # the run's training files, not the eval set
    assert data["meta"]["model_step"] == 2  # the evaluated model: the run's final one, after its 2 iterations
    for direction, (src, tgt) in {"A2B": ("SF1", "TM3"), "B2A": ("TM3", "SF1")}.items():
        block = data["directions"][direction]
        assert (block["source"], block["target"]) == (src, tgt)
        assert list(block["systems"]) == list(SYSTEMS)
        for system, values in block["systems"].items():
            ids = [u["id"] for u in values["utterances"]]
            assert ids == [str(n) for n in EVAL_IDS], system
            for key in ("mcd_db", "sim_to_target", "sim_to_source", "dnsmos_ovrl"):
                assert np.isfinite(values["summary"][key]["mean"]), (direction, system, key)
        means = {s: v["summary"] for s, v in block["systems"].items()}
        # The vocoder floor is far below the distance between two different speakers ...
        assert means["world_resynthesis"]["mcd_db"]["mean"] < means["no_conversion"]["mcd_db"]["mean"] - 2.0
        # ... the source recording is its own speaker, and resynthesis keeps the target's voice.
        nc = means["no_conversion"]
        assert nc["sim_to_source"]["mean"] > nc["sim_to_target"]["mean"] + 0.1
        assert means["world_resynthesis"]["sim_to_target"]["mean"] > means["no_conversion"]["sim_to_target"]["mean"]
    html = (out / "report.html").read_text()
    assert html.count("<audio") == 2 * 4  # one example per direction: source, converted, mean-variance, target


def test_in_process_and_worker_processes_agree(tiny_run, eval_dirs, tmp_path):
    kwargs = dict(device="cpu", n_examples=0, speaker_similarity=False, naturalness=False, progress=False)
    one = evaluate(tiny_run, *eval_dirs, tmp_path / "one", jobs=1, **kwargs)
    two = evaluate(tiny_run, *eval_dirs, tmp_path / "two", jobs=2, **kwargs)
    for direction in ("A2B", "B2A"):
        for system in SYSTEMS:
            a = [r.mcd_db for r in one.results.directions[direction].systems[system]]
            b = [r.mcd_db for r in two.results.directions[direction].systems[system]]
            np.testing.assert_allclose(a, b, rtol=1e-9)


def test_each_recording_is_analysed_once_with_the_same_numbers(tiny_run, eval_dirs, tmp_path, monkeypatch):
    """Per sentence: 8 F0 estimations (the two recordings once each, then per direction the converted
    and mean-variance waveforms and the resynthesis), not 12; the shared analysis gives the metrics
    that analysing every waveform afresh gives."""
    import cyclegan_vc.features as features
    from cyclegan_vc.audio import load_audio
    from cyclegan_vc.metrics import Evaluator

    calls = []
    real = features.estimate_f0
    monkeypatch.setattr(
        features, "estimate_f0", lambda wave, config, f0_range=None: calls.append(len(wave)) or real(wave, config, f0_range)
    )
    run = evaluate(tiny_run, *eval_dirs, tmp_path / "out", device="cpu", n_examples=0, speaker_similarity=False,
                   naturalness=False, progress=False, jobs=1)
    assert len(calls) == 8 * len(EVAL_IDS)
    monkeypatch.setattr(features, "estimate_f0", real)
    config = features.FeatureConfig.from_dict(run.results.meta["features"])
    fresh = Evaluator(config, speaker_similarity=False, naturalness=False)  # analyses every waveform afresh
    for direction, (src, tgt) in (("A2B", (0, 1)), ("B2A", (1, 0))):
        for result in run.results.directions[direction].systems["no_conversion"]:
            a, b = (load_audio(eval_dirs[i] / f"{result.id}.flac", sample_rate=16000)[0] for i in (src, tgt))
            assert result.mcd_db == fresh.evaluate_utterance(result.id, a, b, 16000).mcd_db


def test_speaker_f0_range_analyses_only_the_converted_inputs_in_the_source_speakers_range(
    tiny_run, eval_dirs, tmp_path, monkeypatch
):
    """With f0_range="speaker": per sentence two more F0 estimations, one per direction, each in its source
    speaker's range; the references (and so the no-conversion baseline) stay in the full range."""
    import cyclegan_vc.features as features

    calls = []
    real = features.estimate_f0
    monkeypatch.setattr(
        features, "estimate_f0", lambda wave, config, f0_range=None: calls.append(f0_range) or real(wave, config, f0_range)
    )
    run = evaluate(tiny_run, *eval_dirs, tmp_path / "speaker", device="cpu", n_examples=0, speaker_similarity=False,
                   naturalness=False, progress=False, jobs=1, options=ConversionOptions(f0_range="speaker"))
    monkeypatch.setattr(features, "estimate_f0", real)
    converter = VoiceConverter.load(tiny_run, device="cpu", options=ConversionOptions(f0_range="speaker"))
    ranges = {converter.f0_search_range("A2B"), converter.f0_search_range("B2A")}
    assert len(ranges) == 2 and all(r != (converter.features.f0_floor, converter.features.f0_ceil) for r in ranges)
    assert len(calls) == 10 * len(EVAL_IDS)
    assert [c for c in calls if c is not None] == [converter.f0_search_range(d) for d in ("A2B", "B2A")] * len(EVAL_IDS)
    assert run.results.meta["f0_range"] == "speaker"
    full = evaluate(tiny_run, *eval_dirs, tmp_path / "full", device="cpu", n_examples=0, speaker_similarity=False,
                    naturalness=False, progress=False, jobs=1)
    for direction in ("A2B", "B2A"):
        same = [(a.mcd_db, b.mcd_db) for a, b in zip(run.results.directions[direction].systems["no_conversion"],
                                                     full.results.directions[direction].systems["no_conversion"])]
        assert all(a == b for a, b in same)


def test_a_bad_evaluation_file_is_reported_and_its_sentence_skipped(tiny_run, eval_dirs, tmp_path):
    src = tmp_path / "SF1"
    shutil.copytree(eval_dirs[0], src)
    (src / "200035.flac").write_bytes(b"not audio at all")
    run = evaluate(tiny_run, src, eval_dirs[1], tmp_path / "out", device="cpu", n_examples=0,
                   speaker_similarity=False, naturalness=False, jobs=1, progress=False)
    assert [f for f, _ in run.failures] == [str(src / "200035.flac")]
    assert [r.id for r in run.results.directions["A2B"].systems["cyclegan"]] == ["200027"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["meta"]["failures"][0]["file"].endswith("200035.flac")


def test_no_parallel_sentence_is_a_clear_error(tiny_run, eval_dirs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(eval_dirs[1] / "200027.flac", other / "999999.flac")
    with pytest.raises(ValueError, match="no sentence has a recording in both"):
        evaluate(tiny_run, eval_dirs[0], other, tmp_path / "out", device="cpu", progress=False)


def test_demo_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    """The offline demo from nothing: corpus, prepare, train, convert, evaluate (CLI)."""
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--preset", "debug", "--iterations", "2",
                     "--train-sentences", "3", "--eval-sentences", "2", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "A2B: slt -> rms" in printed and "B2A: rms -> slt" in printed
    assert f"report: {out / 'report' / 'report.html'}" in printed
    assert (out / "run" / "model_latest.safetensors").is_file()
    assert len(list((out / "report" / "converted" / "A2B").glob("*.wav"))) == 2


RECIPE_TRAIN_IDS = (100082, 100086, 100140, 100158)


@pytest.fixture(scope="module")
def recipe_root(vcc_root, tmp_path_factory) -> Path:
    """A VCC 2016-shaped root with four short training files and one evaluation sentence per speaker."""
    root = tmp_path_factory.mktemp("vcc_small")
    for spk in ("SF1", "TM3"):
        for folder, numbers in (("vcc2016_training", RECIPE_TRAIN_IDS), ("evaluation_all", (200027,))):
            (root / folder / spk).mkdir(parents=True)
            for n in numbers:
                shutil.copy(vcc_root / folder / spk / f"{n}.flac", root / folder / spk / f"{n}.flac")
    return root


def test_recipe_end_to_end_with_a_wider_mel_cepstrum(recipe_root, tmp_path, capsys):
    """The recipe's paper split (first half of the source's files, second half of the target's), its
    feature dimension carried into the model, and the evaluation of the held-out sentence both ways."""
    from cyclegan_vc.conversion import VoiceConverter

    run = tmp_path / "run"
    code = cli.main(["recipe", "vcc2016", "--root", str(recipe_root), "--source", "SF1", "--target", "TM3",
                     "--run", str(run), "--preset", "debug", "--iterations", "2", "--mcep-dim", "36",
                     "--set", "training.validation_interval=0", "--device", "cpu", "--jobs", "1"])
    assert code == 0
    assert "A2B: SF1 -> TM3" in capsys.readouterr().out
    manifest = json.loads((run / "prepared" / "manifest.json").read_text())
    assert manifest["features"]["mcep_dim"] == 36
    assert [e["id"] for e in manifest["speakers"]["A"]["train"]] == ["100082", "100086"]
    assert [e["id"] for e in manifest["speakers"]["B"]["train"]] == ["100140", "100158"]
    converter = VoiceConverter.load(run, device="cpu")
    assert converter.features.mcep_dim == 36
    assert converter.generators["G_ab"].config["in_channels"] == 36
    assert (run / "evaluation" / "converted" / "B2A" / "200027.wav").is_file()


def test_recipe_names_the_missing_corpus_folder(tmp_path):
    from cyclegan_vc.recipe import recipe

    with pytest.raises(FileNotFoundError, match=r"vcc2016_training.SF1 not found"):
        recipe(tmp_path, "SF1", "TF2", tmp_path / "run", preset="debug", iterations=1, progress=False)


@pytest.mark.parametrize("command", [
    ["prepare", "--source", "a", "--target", "b", "--out", "c"],
    ["evaluate", "--model", "m", "--source-eval", "a", "--target-eval", "b", "--out", "c"],
    ["demo"],
    ["recipe", "vcc2016", "--root", "r", "--run", "c"],
])
def test_every_parallel_command_takes_jobs_and_refuses_zero(command, capsys):
    """The stages with worker processes take --jobs (the way to find a file that kills a worker,
    which WorkersDied's message names); 0 or a negative count is an error, not "all cores"."""
    assert cli.build_parser().parse_args(command + ["--jobs", "1"]).jobs == 1
    assert cli.build_parser().parse_args(command).jobs is None
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(command + ["--jobs", "0"])
    assert "expected a whole number > 0, got '0'" in capsys.readouterr().err


def test_mcep_dim_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--source", "a", "--target", "b", "--out", "c", "--mcep-dim", "0"])
    assert "expected a whole number > 0, got '0'" in capsys.readouterr().err

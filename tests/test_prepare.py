import shutil

import numpy as np
import pytest

from cyclegan_vc.features import FeatureConfig
from cyclegan_vc.prepare import (
    feature_config,
    format_summary,
    load_features,
    load_manifest,
    load_stats,
    prepare,
)


@pytest.fixture
def corpus(tmp_path, vcc_root):
    """A tiny parallel corpus of real VCC 2016 files: 4 training files per speaker, 2 evaluation."""
    root = tmp_path / "corpus"
    for spk in ("SF1", "TM3"):
        for n in range(100001, 100005):
            dst = root / "train" / spk / f"{n}.flac"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(vcc_root / "vcc2016_training" / spk / f"{n}.flac", dst)
        for n in (200001, 200002):
            dst = root / "eval" / spk / f"{n}.flac"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(vcc_root / "evaluation_all" / spk / f"{n}.flac", dst)
    return root


def run(corpus, out, **kw):
    kw.setdefault("f0", "dio")
    kw.setdefault("jobs", 2)
    return prepare(
        corpus / "train" / "SF1",
        corpus / "train" / "TM3",
        out,
        source_eval=corpus / "eval" / "SF1",
        target_eval=corpus / "eval" / "TM3",
        progress=False,
        **kw,
    )


def test_prepare_writes_manifest_cache_and_training_only_stats(corpus, tmp_path):
    out = tmp_path / "prepared"
    manifest = run(corpus, out)
    assert manifest == load_manifest(out)
    assert manifest["run"] == {"analysed": 12, "cached": 0, "skipped": 0}
    a, b = manifest["speakers"]["A"], manifest["speakers"]["B"]
    assert (a["name"], b["name"]) == ("SF1", "TM3")
    assert [e["id"] for e in a["train"]] == ["100001", "100002", "100003", "100004"]
    assert [e["id"] for e in a["eval"]] == [e["id"] for e in b["eval"]] == ["200001", "200002"]
    assert feature_config(out) == FeatureConfig(f0_method="dio")

    # statistics equal a direct numpy computation over the cached training features only
    stats = load_stats(out)
    for role in ("A", "B"):
        feats = [load_features(out, e) for e in manifest["speakers"][role]["train"]]
        mcep = np.concatenate([f["mcep"] for f in feats]).astype(np.float64)
        f0 = np.concatenate([f["f0"] for f in feats])
        np.testing.assert_allclose(stats[role].mcep_mean, mcep.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats[role].mcep_std, mcep.std(0), rtol=1e-6)
        assert stats[role].logf0_mean == pytest.approx(np.log(f0[f0 > 0]).mean())
        assert stats[role].n_frames == sum(e["frames"] for e in manifest["speakers"][role]["train"])
    assert np.exp(stats["A"].logf0_mean) > 1.4 * np.exp(stats["B"].logf0_mean)  # female vs male

    entry = a["train"][0]
    arrays = load_features(out, entry)
    assert set(arrays) == {"f0", "mcep", "ap_coded"}
    assert arrays["mcep"].shape == (entry["frames"], 24) and arrays["mcep"].dtype == np.float32
    assert "SF1" in format_summary(manifest) and "analysed 12" in format_summary(manifest)


def test_second_run_uses_the_cache_and_a_changed_setting_recomputes(corpus, tmp_path):
    out = tmp_path / "prepared"
    run(corpus, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()}
    again = run(corpus, out)
    assert again["run"] == {"analysed": 0, "cached": 12, "skipped": 0}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cache").iterdir()} == stamps
    shared = run(corpus, tmp_path / "other", cache_dir=out / "cache")  # a cache shared by two outputs
    assert shared["run"]["analysed"] == 0
    assert load_features(tmp_path / "other", shared["speakers"]["A"]["train"][0])["mcep"].shape[1] == 24
    changed = run(corpus, out, features=FeatureConfig(mcep_dim=36))
    assert changed["run"]["analysed"] == 12
    assert load_features(out, changed["speakers"]["A"]["train"][0])["mcep"].shape[1] == 36


def test_bad_files_are_reported_and_skipped(corpus, tmp_path):
    (corpus / "train" / "SF1" / "broken.wav").write_text("not audio")
    (corpus / "train" / "TM3" / "empty.wav").write_bytes(b"")
    manifest = run(corpus, tmp_path / "prepared", jobs=1)
    reasons = {s["audio"].rsplit("/", 1)[1]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"broken.wav", "empty.wav"}
    assert "not a readable audio file" in reasons["broken.wav"] and "empty" in reasons["empty.wav"]
    assert len(manifest["speakers"]["A"]["train"]) == 4
    assert "broken.wav" in format_summary(manifest)


def test_paper_split_keeps_first_source_half_and_second_target_half(corpus, tmp_path):
    manifest = run(corpus, tmp_path / "prepared", paper_split=True)
    a = [e["id"] for e in manifest["speakers"]["A"]["train"]]
    b = [e["id"] for e in manifest["speakers"]["B"]["train"]]
    assert a == ["100001", "100002"] and b == ["100003", "100004"]
    assert manifest["paper_split"] is True


def test_no_usable_training_audio_is_an_error(tmp_path):
    for spk in ("a", "b"):
        (tmp_path / spk).mkdir()
        (tmp_path / spk / "x.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable training audio"):
        prepare(tmp_path / "a", tmp_path / "b", tmp_path / "out", jobs=1, progress=False)


def test_dead_workers_are_one_clear_error_not_a_skip_per_file(corpus, tmp_path, unguarded_script_dies):
    # the commonest way to kill them: a script calling prepare() at import time (spawned workers import it)
    error = unguarded_script_dies(f"""
        from cyclegan_vc.prepare import prepare
        prepare({str(corpus / "train" / "SF1")!r}, {str(corpus / "train" / "TM3")!r}, {str(tmp_path / "out")!r},
                f0="dio", jobs=2, progress=False)
    """, "prepare")
    assert "if __name__" in error and "`--jobs 1` on the command line, jobs=1 in Python" in error
    assert not (tmp_path / "out" / "manifest.json").exists()

"""The flite demo corpus: sentences, layout, 16 kHz audio, non-parallel split, determinism, reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cyclegan_vc.audio import load_audio
from cyclegan_vc.data.corpus import list_audio_files, utterance_id
from cyclegan_vc.data.demo_corpus import DemoCorpusError, flite_voices, load_sentences, make_demo_corpus
from cyclegan_vc.features import FeatureConfig, estimate_f0

needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)"
)

# n_eval=2 leaves sentences 3..205 (203): halves of 101, so voice A starts at line 3, voice B at line 104.
TINY = dict(n_eval=2, n_train=3, progress=False)
TRAIN_A = ["t0003", "t0004", "t0005"]
TRAIN_B = ["t0104", "t0105", "t0106"]
EVAL = ["e0001", "e0002"]


def test_sentences_are_many_unique_and_of_reasonable_length():
    sentences = load_sentences()
    assert len(sentences) >= 180
    assert len(set(s.lower() for s in sentences)) == len(sentences)
    assert all(5 <= len(s.split()) <= 20 for s in sentences), [s for s in sentences if not 5 <= len(s.split()) <= 20]
    endings = {s[-1] for s in sentences}
    assert {".", "?", "!"} <= endings  # statements, questions and exclamations


def _files(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    return make_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", **TINY)


@needs_flite
def test_layout_and_manifest(tiny):
    sentences = load_sentences()
    for split, voice, ids in [
        ("training", "slt", TRAIN_A),
        ("training", "rms", TRAIN_B),
        ("evaluation", "slt", EVAL),
        ("evaluation", "rms", EVAL),
    ]:
        folder = tiny / split / voice
        assert [utterance_id(p, folder) for p in list_audio_files(folder)] == ids
    assert sorted(p.name for p in tiny.rglob("*") if p.is_file() and p.suffix != ".wav") == ["corpus.json"]

    manifest = json.loads((tiny / "corpus.json").read_text())
    assert manifest["voices"] == {"A": "slt", "B": "rms"} and manifest["sample_rate"] == 16000
    for split in ("train", "eval"):
        for entries in manifest["splits"][split].values():
            for entry in entries:
                assert (tiny / entry["audio"]).is_file()
                number = int(entry["id"][1:])  # ids are line numbers in sentences.txt
                assert entry["text"] == sentences[number - 1]


@needs_flite
def test_training_halves_are_non_parallel_and_evaluation_is_parallel(tiny):
    splits = json.loads((tiny / "corpus.json").read_text())["splits"]
    train_a = {e["text"] for e in splits["train"]["slt"]}
    train_b = {e["text"] for e in splits["train"]["rms"]}
    assert len(train_a) == len(train_b) == 3 and not train_a & train_b
    assert not {e["id"] for e in splits["train"]["slt"]} & {e["id"] for e in splits["train"]["rms"]}
    assert splits["eval"]["slt"] == [
        {**e, "audio": e["audio"].replace("/rms/", "/slt/")} for e in splits["eval"]["rms"]
    ]
    eval_texts = {e["text"] for e in splits["eval"]["slt"]}
    assert not eval_texts & (train_a | train_b)


@needs_flite
def test_audio_is_16khz_speech_from_two_different_voices(tiny):
    f0_medians = {}
    for voice in ("slt", "rms"):
        for path in sorted(tiny.glob(f"*/{voice}/*.wav")):
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
            assert info.duration > 1.0, path
        wave, rate = load_audio(tiny / "evaluation" / voice / "e0001.wav", sample_rate=None)  # validates: not silent
        f0, _ = estimate_f0(wave, FeatureConfig(f0_method="dio"))
        f0_medians[voice] = float(np.median(f0[f0 > 0]))
    # slt is a female voice, rms a male one: the pitch differs clearly.
    assert f0_medians["slt"] > 1.4 * f0_medians["rms"], f0_medians


@needs_flite
def test_rendering_is_deterministic(tiny, tmp_path):
    again = make_demo_corpus(tmp_path / "again", workers=3, **TINY)
    assert _files(again) == _files(tiny)


@needs_flite
def test_rerun_skips_rendered_files_and_drops_stale_ones(tiny, tmp_path):
    dest = tmp_path / "corpus"
    shutil.copytree(tiny, dest)
    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*.wav")}
    make_demo_corpus(dest, **TINY)
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.wav")} == stamps  # nothing rendered again

    # A file whose recorded text differs (an edited sentences.txt) is rendered again.
    manifest = json.loads((dest / "corpus.json").read_text())
    manifest["splits"]["train"]["rms"][0]["text"] = "Some older wording of the sentence."
    (dest / "corpus.json").write_text(json.dumps(manifest))
    make_demo_corpus(dest, **TINY)
    changed = [p.name for p in dest.rglob("*.wav") if p.stat().st_mtime_ns != stamps[p]]
    assert changed == ["t0104.wav"]
    assert _files(dest) == _files(tiny)

    # Fewer training sentences: the files no longer in the corpus are removed, not left to leak in.
    make_demo_corpus(dest, n_eval=2, n_train=2, progress=False)
    assert [p.stem for p in list_audio_files(dest / "training/slt")] == TRAIN_A[:2]
    assert [p.stem for p in list_audio_files(dest / "training/rms")] == TRAIN_B[:2]
    assert len(json.loads((dest / "corpus.json").read_text())["splits"]["train"]["rms"]) == 2


@needs_flite
def test_voice_at_another_rate_is_resampled_to_16khz(tmp_path):
    if "kal" not in flite_voices():
        pytest.skip("this flite has no 'kal' voice (its 8 kHz voice)")
    dest = make_demo_corpus(tmp_path / "kal", voices=("kal", "rms"), n_eval=1, n_train=1, progress=False)
    info = sf.info(dest / "evaluation/kal/e0001.wav")
    assert (info.samplerate, info.subtype) == (16000, "PCM_16") and info.duration > 1.0


@needs_flite
def test_bad_arguments_are_reported(tmp_path):
    with pytest.raises(ValueError, match="unknown flite voice 'nobody'.*slt"):
        make_demo_corpus(tmp_path / "x", voices=("slt", "nobody"), progress=False)
    with pytest.raises(ValueError, match="two different"):
        make_demo_corpus(tmp_path / "x", voices=("slt", "slt"), progress=False)
    with pytest.raises(ValueError, match="n_train must be between 1 and 90"):
        make_demo_corpus(tmp_path / "x", n_train=91, progress=False)
    with pytest.raises(ValueError, match="n_eval"):
        make_demo_corpus(tmp_path / "x", n_eval=0, progress=False)
    assert not (tmp_path / "x").exists()


def test_missing_flite_says_how_to_install(tmp_path):
    with pytest.raises(DemoCorpusError, match="apt-get install flite"):
        make_demo_corpus(tmp_path / "x", flite=tmp_path / "no-such-flite", progress=False)
    with pytest.raises(DemoCorpusError, match="apt-get install flite"):
        flite_voices(flite="definitely-not-flite-xyz")

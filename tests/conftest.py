"""Shared fixtures: the real VCC 2016 files in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

VCC_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "vcc2016"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the test
    networks are tiny, and two threads only contend on a loaded 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vcc_root() -> Path:
    if not (VCC_ROOT / "vcc2016_training" / "SF1").is_dir():
        pytest.skip(f"VCC 2016 data not found at {VCC_ROOT} (expected ../shared/data/vcc2016 beside the repo)")
    return VCC_ROOT


@pytest.fixture(scope="session")
def vcc_file(vcc_root):
    """Path of one real training utterance of a speaker: vcc_file('SF1', 100001)."""

    def get(speaker: str, number: int) -> Path:
        split = "vcc2016_training" if number < 200000 else "evaluation_all"
        return vcc_root / split / speaker / f"{number}.flac"

    return get


@pytest.fixture(scope="session")
def training_corpus(vcc_root, tmp_path_factory):
    """``make(name, ids)``: a new folder holding ``SF1/`` and ``TM3/`` with copies of those real VCC 2016
    training files (``{id}.flac``)."""
    import shutil

    def make(name: str, ids) -> Path:
        root = tmp_path_factory.mktemp(name)
        for spk in ("SF1", "TM3"):
            (root / spk).mkdir()
            for n in ids:
                shutil.copy(vcc_root / "vcc2016_training" / spk / f"{n}.flac", root / spk / f"{n}.flac")
        return root

    return make


#: Real VCC 2016 utterances behind the ``tiny_prepared`` fixture: among the shortest (about 1.1-1.3 s) of
#: SF1 and TM3, two training files per speaker and one parallel evaluation sentence.
TINY_TRAIN_IDS = (100082, 100158)
TINY_EVAL_IDS = (200027,)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, vcc_root) -> Path:
    """A prepared-data directory made by the real ``prepare`` stage (dio F0, one process) from a few short
    VCC 2016 files: A = SF1, B = TM3, 2 training utterances each, 1 parallel eval utterance.

    Shared by the whole session: tests must treat it as read-only.
    """
    import shutil

    from cyclegan_vc.prepare import prepare

    root = tmp_path_factory.mktemp("tiny_corpus")
    for spk in ("SF1", "TM3"):
        for split, folder, numbers in (("train", "vcc2016_training", TINY_TRAIN_IDS), ("eval", "evaluation_all", TINY_EVAL_IDS)):
            dst = root / split / spk
            dst.mkdir(parents=True, exist_ok=True)
            for n in numbers:
                shutil.copy(vcc_root / folder / spk / f"{n}.flac", dst / f"{n}.flac")
    out = root / "prepared"
    prepare(
        root / "train" / "SF1",
        root / "train" / "TM3",
        out,
        source_eval=root / "eval" / "SF1",
        target_eval=root / "eval" / "TM3",
        f0="dio",
        jobs=1,
        progress=False,
    )
    return out


@pytest.fixture
def unguarded_script_dies(tmp_path):
    """Run ``code`` as a script that calls a stage with worker processes at import time (no
    ``if __name__ == "__main__":``; the spawned workers import it again and die) and check the outcome:
    a failed run that ends in exactly one ``WorkersDied`` for ``stage`` and blames no file. Returns that
    line (the traceback's last; the multiprocessing resource tracker may warn after it at exit)."""
    import subprocess
    import sys
    import textwrap

    def run(code: str, stage: str) -> str:
        script = tmp_path / "unguarded.py"
        script.write_text(textwrap.dedent(code))
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("cyclegan_vc.utils.WorkersDied")]
        assert len(errors) == 1, proc.stderr[-3000:]
        assert errors[0].startswith(f"cyclegan_vc.utils.WorkersDied: {stage}(): its worker processes ended abruptly")
        assert "skipped" not in proc.stderr  # no file is blamed for it
        return errors[0]

    return run


@pytest.fixture(scope="session")
def tiny_model(tiny_prepared, tmp_path_factory) -> Path:
    """An exported model trained for 2 iterations of the ``debug`` preset on ``tiny_prepared`` (a real
    model file of the toolkit's format; its conversions are not meant to sound like anyone)."""
    from cyclegan_vc.training import train

    run = tmp_path_factory.mktemp("tiny_model") / "run"
    return train(tiny_prepared, run, preset="debug", iterations=2, device="cpu", progress=False).model_latest

"""The demo's output folder: the demo writes, reuses and deletes only what is its own.

The demo end to end (corpus, prepare, train, evaluate) is tested in test_evaluation.py.
"""

from __future__ import annotations

import pytest

from cyclegan_vc import cli
from cyclegan_vc.demo import MARKER, _claim, demo
from cyclegan_vc.utils import UserError

TINY = dict(preset="debug", iterations=1, n_train=1, n_eval=1, device="cpu", jobs=1, progress=False)


def test_the_demo_refuses_a_folder_it_did_not_make_and_deletes_nothing(tmp_path):
    out = tmp_path / "project"
    (out / "run").mkdir(parents=True)
    (out / "run" / "notes.txt").write_text("someone else's run\n")
    (out / "paper.tex").write_text("\\documentclass{article}\n")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(UserError, match="not empty and holds no earlier demo output"):
        demo(out, **TINY)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "run" / "notes.txt").read_text() == "someone else's run\n"


def test_the_demo_command_names_the_refused_folder_in_one_line(tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "keep.wav").write_bytes(b"RIFF")
    assert cli.main(["demo", "--out", str(out), "--preset", "debug", "--iterations", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and MARKER in err[0]
    assert [p.name for p in out.iterdir()] == ["keep.wav"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        demo(tmp_path / "file", **TINY)


def test_a_new_or_empty_folder_becomes_the_demos_and_an_earlier_demos_is_reused(tmp_path):
    for out in (tmp_path / "new" / "demo", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        _claim(out)
        assert [p.name for p in out.iterdir()] == [MARKER]
    earlier = tmp_path / "new" / "demo"
    (earlier / "run").mkdir()
    (earlier / "corpus").mkdir()
    _claim(earlier)  # marked: the demo's own folder, which it may rewrite
    assert sorted(p.name for p in earlier.iterdir()) == sorted([MARKER, "corpus", "run"])

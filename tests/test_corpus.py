"""Corpus discovery: listing, utterance ids, the paper's non-parallel split, parallel pairing."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from cyclegan_vc.data.corpus import list_audio_files, match_parallel, paper_split, utterance_id

VCC2016 = Path(__file__).resolve().parents[2] / "shared/data/vcc2016"
needs_vcc = pytest.mark.skipif(
    not (VCC2016 / "vcc2016_training/SF1").is_dir(), reason=f"VCC 2016 not found in {VCC2016}"
)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # listing looks at names only


def test_list_audio_files_recursive_case_insensitive_sorted(tmp_path):
    audio = ["b.WAV", "a.flac", "sub/c.Ogg", "sub/deeper/a.wav"]
    other = ["README", "notes.txt", "a.wav.tmp", ".hidden.wav", "._a.wav", ".cache/x.wav", "sub/.d.wav.tmp"]
    _touch(tmp_path, *audio, *other)
    found = list_audio_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.flac", "b.WAV", "sub/c.Ogg", "sub/deeper/a.wav"]
    assert all(p.is_absolute() == tmp_path.is_absolute() for p in found)


def test_list_audio_files_errors_name_the_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_audio_files(missing)
    _touch(tmp_path, "only/README", "only/text.txt")
    with pytest.raises(ValueError, match="no audio files.*only"):
        list_audio_files(tmp_path / "only")
    with pytest.raises(NotADirectoryError, match="README"):
        list_audio_files(tmp_path / "only/README")


def test_utterance_id(tmp_path):
    assert utterance_id(tmp_path / "SF1/100001.flac", tmp_path / "SF1") == "100001"
    assert utterance_id(tmp_path / "spk/session 1/take.3.wav", tmp_path / "spk") == "session 1/take.3"
    with pytest.raises(ValueError, match="not inside"):
        utterance_id(tmp_path / "other/x.wav", tmp_path / "spk")


def test_paper_split_vcc_sizes_first_and_last_half():
    ids = [f"{100001 + i}" for i in range(162)]
    source = [Path(f"/data/SF1/{uid}.wav") for uid in ids]
    target = [Path(f"/data/TF2/{uid}.wav") for uid in ids]
    random.Random(0).shuffle(target)  # order of the input does not matter
    a, b = paper_split(source, target)
    assert [p.stem for p in a] == ids[:81]
    assert [p.stem for p in b] == ids[81:]
    assert {p.parent.name for p in a} == {"SF1"} and {p.parent.name for p in b} == {"TF2"}


@pytest.mark.parametrize("n", list(range(2, 12)) + [161, 162])
def test_paper_split_never_shares_a_sentence(n):
    ids = [f"u{i:03d}" for i in range(n)]
    a, b = paper_split([Path(f"A/{u}.wav") for u in ids], [Path(f"B/{u}.flac") for u in ids])
    a_ids, b_ids = [p.stem for p in a], [p.stem for p in b]
    assert not set(a_ids) & set(b_ids)
    assert len(a_ids) == len(b_ids) == n // 2
    assert a_ids == ids[: n // 2] and b_ids == ids[(n + 1) // 2 :]


def test_paper_split_accepts_path_id_pairs_and_key():
    pairs = [(Path(f"/A/{i}.wav"), f"sub/{i:02d}") for i in range(10)]
    a, b = paper_split(pairs, list(reversed(pairs)))
    assert [uid for _, uid in a] == [f"sub/{i:02d}" for i in range(5)]
    assert [uid for _, uid in b] == [f"sub/{i:02d}" for i in range(5, 10)]
    records = [{"id": f"{i:02d}"} for i in range(4)]
    a, b = paper_split(records, records, key=lambda r: r["id"])
    assert [r["id"] for r in a] == ["00", "01"] and [r["id"] for r in b] == ["02", "03"]


def test_paper_split_rejects_overlap_and_tiny_lists():
    # Different id sets can put a sentence on both sides: refused, with the ids named.
    source = [Path(f"{i:02d}.wav") for i in range(10, 20)]  # keeps 10..14
    target = [Path(f"{i:02d}.wav") for i in range(0, 30)]  # keeps 15..29 -> no overlap
    paper_split(source, target)
    target = [Path(f"{i:02d}.wav") for i in range(0, 24)]  # keeps 12..23 -> 12, 13, 14 shared
    with pytest.raises(ValueError, match="3 sentence.*12, 13, 14"):
        paper_split(source, target)
    with pytest.raises(ValueError, match="at least 2 target"):
        paper_split(source, [Path("1.wav")])


def test_match_parallel_pairs_by_id_and_logs_orphans(tmp_path, caplog):
    src, tgt = tmp_path / "SF1", tmp_path / "TM3"
    _touch(src, "200003.wav", "200001.wav", "200002.wav", "only_src.wav")
    _touch(tgt, "200002.flac", "200001.flac", "200003.flac", "200004.flac")
    with caplog.at_level(logging.WARNING, logger="cyclegan_vc.data.corpus"):
        pairs = match_parallel(list_audio_files(src), list_audio_files(tgt), src, tgt)
    assert [(a.name, b.name) for a, b in pairs] == [
        ("200001.wav", "200001.flac"),
        ("200002.wav", "200002.flac"),
        ("200003.wav", "200003.flac"),
    ]
    assert "only_src" in caplog.text and "200004" in caplog.text


def test_match_parallel_duplicate_id_is_an_error(tmp_path):
    _touch(tmp_path / "A", "x.wav", "x.flac")
    _touch(tmp_path / "B", "x.wav")
    with pytest.raises(ValueError, match="utterance id 'x'"):
        a, b = tmp_path / "A", tmp_path / "B"
        match_parallel(list_audio_files(a), list_audio_files(b), a, b)


@needs_vcc
def test_real_vcc2016_folders():
    sf1 = VCC2016 / "vcc2016_training/SF1"
    files = list_audio_files(sf1)
    assert len(files) == 162
    assert utterance_id(files[0], sf1) == "100001" and utterance_id(files[-1], sf1) == "100162"
    everything = list_audio_files(VCC2016 / "vcc2016_training")  # README beside the speakers is not audio
    assert len(everything) == 4 * 162 and not any(p.name == "README" for p in everything)

    tf2 = VCC2016 / "vcc2016_training/TF2"
    a, b = paper_split(
        [(p, utterance_id(p, sf1)) for p in files], [(p, utterance_id(p, tf2)) for p in list_audio_files(tf2)]
    )
    assert [uid for _, uid in a] == [str(100001 + i) for i in range(81)]
    assert [uid for _, uid in b] == [str(100082 + i) for i in range(81)]

    ev_src, ev_tgt = VCC2016 / "evaluation_all/SF1", VCC2016 / "evaluation_all/TM3"
    pairs = match_parallel(list_audio_files(ev_src), list_audio_files(ev_tgt), ev_src, ev_tgt)
    assert len(pairs) == 54
    assert all(s.stem == t.stem for s, t in pairs) and pairs[0][0].stem == "200001"

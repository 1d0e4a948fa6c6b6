"""Corpus discovery: list a speaker's audio files, name utterances, split and pair them.

A *speaker folder* holds one speaker's recordings, possibly in sub-folders (VCC 2016:
``vcc2016_training/SF1/100001.wav`` ... ``100162.wav``). An *utterance id* is a file's path
relative to its speaker folder, without extension and with forward slashes (``"100001"``,
``"session1/take3"``); the same sentence has the same id for every speaker of a parallel corpus.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePath
from typing import Callable, Sequence, TypeVar

from ..audio import AUDIO_EXTENSIONS

__all__ = ["list_audio_files", "match_parallel", "paper_split", "utterance_id"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How many ids a log message lists before it says "and N more".
_LOG_IDS = 5


def list_audio_files(root: str | os.PathLike) -> list[Path]:
    """Every audio file under ``root`` (recursively), sorted by path relative to ``root``.

    A file counts as audio when its extension, in any case, is in
    :data:`cyclegan_vc.audio.AUDIO_EXTENSIONS`. Hidden files and folders (name starting with
    ``.``: temporary files, macOS ``._*`` resource forks) are skipped; symbolic links to files are
    listed, links to folders are not followed. The order is a plain string sort of the relative
    POSIX paths (``100001`` < ``100002``; ``a10`` < ``a2``), stable across machines.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
        ValueError: ``root`` holds no audio file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"audio folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root} (expected a folder of one speaker's audio files)")
    extensions = {ext.lower() for ext in AUDIO_EXTENSIONS}
    found: list[tuple[str, Path]] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                continue
            path = Path(folder, name)
            found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in folder {root}")
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def utterance_id(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """The id of ``path`` within the speaker folder ``root``: relative path, no extension, ``/``-separated.

    ``utterance_id("data/SF1/100001.flac", "data/SF1") == "100001"``. Raises ``ValueError`` if
    ``path`` is not inside ``root``.
    """
    path, root = Path(path), Path(root)
    try:
        relative = path.relative_to(root)
    except ValueError:
        try:
            relative = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise ValueError(f"{path} is not inside the speaker folder {root}") from None
    return relative.with_suffix("").as_posix()


def _default_id(item: object) -> str:
    """Id of a bare path (its name without extension) or of a ``(path, id)`` pair (the id)."""
    if isinstance(item, (str, os.PathLike)):
        return PurePath(item).stem
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str):
        return item[1]
    raise TypeError(f"cannot tell the utterance id of {item!r}; pass key=")


def _preview(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_LOG_IDS])
    return shown + (f" and {len(ids) - _LOG_IDS} more" if len(ids) > _LOG_IDS else "")


def paper_split(
    source_files: Sequence[T],
    target_files: Sequence[T],
    *,
    key: Callable[[T], str] | None = None,
) -> tuple[list[T], list[T]]:
    """The paper's non-parallel protocol on a parallel corpus: first half of the source, second half of the target.

    Both lists are sorted by utterance id; the source keeps its first ``floor(n_s / 2)`` files and
    the target its files from index ``ceil(n_t / 2)`` on, i.e. its last ``floor(n_t / 2)``. With
    an odd count the middle file is used by neither side, so when both lists hold the same ids no
    sentence is spoken on both sides. VCC 2016 (162 training files per speaker): source
    100001-100081, target 100082-100162.

    Args:
        source_files, target_files: the training files of each speaker, in any order. Items are
            paths (id = file name without extension) or ``(path, utterance_id)`` pairs; any other
            item type needs ``key``.
        key: returns an item's utterance id.

    Returns:
        ``(source_half, target_half)``, each sorted by id.

    Raises:
        ValueError: a side has fewer than 2 files, or the halves share an utterance id (possible
            only when the two lists hold different ids); the message lists the shared ids.
    """
    id_of = key or _default_id
    for side, files in (("source", source_files), ("target", target_files)):
        if len(files) < 2:
            raise ValueError(f"paper split needs at least 2 {side} files, got {len(files)}")
    source = sorted(source_files, key=id_of)
    target = sorted(target_files, key=id_of)
    source_half = source[: len(source) // 2]
    target_half = target[(len(target) + 1) // 2 :]
    shared = sorted({id_of(item) for item in source_half} & {id_of(item) for item in target_half})
    if shared:
        raise ValueError(
            f"paper split leaves {len(shared)} sentence(s) on both sides ({_preview(shared)}): the source "
            "and target folders do not hold the same utterance ids; split them by hand instead"
        )
    log.info(
        "paper split: source keeps %d of %d files (%s..%s), target keeps %d of %d (%s..%s)",
        len(source_half),
        len(source),
        id_of(source_half[0]),
        id_of(source_half[-1]),
        len(target_half),
        len(target),
        id_of(target_half[0]),
        id_of(target_half[-1]),
    )
    return source_half, target_half


def match_parallel(
    source_files: Sequence[str | os.PathLike],
    target_files: Sequence[str | os.PathLike],
    source_root: str | os.PathLike,
    target_root: str | os.PathLike,
) -> list[tuple[Path, Path]]:
    """Pair source and target files of the same sentence (same utterance id), for parallel evaluation.

    Files without a partner are left out and logged (a warning with their ids).

    Returns:
        ``[(source_path, target_path), ...]`` sorted by utterance id.

    Raises:
        ValueError: two files of one side share an id (``a.wav`` and ``a.flac``); the message names both.
    """

    def by_id(files: Sequence[str | os.PathLike], root: str | os.PathLike, side: str) -> dict[str, Path]:
        table: dict[str, Path] = {}
        for file in files:
            uid = utterance_id(file, root)
            if uid in table:
                raise ValueError(f"two {side} files have the utterance id {uid!r}: {table[uid]} and {file}")
            table[uid] = Path(file)
        return table

    sources = by_id(source_files, source_root, "source")
    targets = by_id(target_files, target_root, "target")
    for side, mine, other in (("source", sources, targets), ("target", targets, sources)):
        lonely = sorted(set(mine) - set(other))
        if lonely:
            log.warning(
                "%d %s file(s) have no parallel partner and are ignored: %s", len(lonely), side, _preview(lonely)
            )
    return [(sources[uid], targets[uid]) for uid in sorted(set(sources) & set(targets))]

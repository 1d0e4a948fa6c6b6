"""An offline two-speaker demo corpus rendered with the ``flite`` speech synthesiser.

Real speech corpora need a download; this one needs only the ``flite`` command (Debian/Ubuntu:
``apt-get install flite``), whose CMU Arctic voices ``slt`` (female, US) and ``rms`` (male, US)
speak at 16 kHz. The sentences are the package's own ``sentences.txt`` (one per line).

The split mirrors the paper's use of VCC 2016:

- the first ``n_eval`` sentences (25 by default) are the held-out *parallel* evaluation set,
  spoken by both voices with the same ids ``e0001``, ``e0002``, ...;
- the remaining sentences are cut into two halves of equal size (an odd one out at the end is
  unused): voice A speaks the first half, voice B the second, so no training sentence is spoken by
  both (non-parallel training data). A training id is ``t`` + the sentence's 1-based line number
  in ``sentences.txt`` (``t0026`` ...), so the two voices' training ids never coincide.

Layout of ``DEST``::

    training/<voiceA>/t0026.wav ...     evaluation/<voiceA>/e0001.wav ...
    training/<voiceB>/t0116.wav ...     evaluation/<voiceB>/e0001.wav ...
    corpus.json                         voices, sample rate, and every file's id and text

Files are 16 kHz mono 16-bit WAV. Rendering is deterministic (a rerun writes the same bytes) and
idempotent: a file that ``corpus.json`` records with the same text is not rendered again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from ..audio import AudioError, limit_peaks, load_audio
from ..utils import OutsideFailure, atomic_write, atomic_write_json, read_json

__all__ = [
    "DEFAULT_N_EVAL",
    "DEFAULT_VOICES",
    "DEMO_SAMPLE_RATE",
    "DemoCorpusError",
    "flite_voices",
    "load_sentences",
    "make_demo_corpus",
]

log = logging.getLogger(__name__)

#: Voice A (female) and voice B (male) of the demo corpus.
DEFAULT_VOICES = ("slt", "rms")
#: Sample rate of every file written (Hz).
DEMO_SAMPLE_RATE = 16000
#: Number of parallel evaluation sentences by default.
DEFAULT_N_EVAL = 25
#: Version of the ``corpus.json`` layout.
CORPUS_FORMAT_VERSION = 1

_SPLIT_DIRS = {"train": "training", "eval": "evaluation"}
_OUR_FILE = re.compile(r"[te]\d{4}\.wav")


class DemoCorpusError(OutsideFailure):
    """flite is missing or failed; the message says what to do."""


@dataclass(frozen=True)
class _Job:
    split: str  # "train" or "eval"
    voice: str
    uid: str
    text: str

    @property
    def relpath(self) -> str:
        return f"{_SPLIT_DIRS[self.split]}/{self.voice}/{self.uid}.wav"


def load_sentences() -> list[str]:
    """The demo sentences shipped in ``cyclegan_vc/data/sentences.txt``, in file order (blank lines skipped)."""
    text = resources.files(__package__).joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _find_flite(flite: str | os.PathLike | None) -> str:
    found = shutil.which(str(flite or "flite"))
    if found is None:
        raise DemoCorpusError(
            f"the flite speech synthesiser was not found ({flite or 'flite'}); install it with "
            "`apt-get install flite` (Debian/Ubuntu) or `brew install flite` (macOS)"
        )
    return found


def flite_voices(flite: str | os.PathLike | None = None) -> list[str]:
    """Names of the voices the ``flite`` binary knows (``flite -lv``), e.g. ``["kal", "awb", "rms", "slt", ...]``."""
    binary = _find_flite(flite)
    result = subprocess.run([binary, "-lv"], capture_output=True, text=True, check=False)
    listing = result.stdout + result.stderr
    _, _, names = listing.partition("Voices available:")
    if result.returncode != 0 or not names.split():
        raise DemoCorpusError(
            f"`{binary} -lv` did not list any voice (exit code {result.returncode}): {listing.strip()}"
        )
    return names.split()


def _plan(
    sentences: list[str], voices: tuple[str, str], n_train: int | None, n_eval: int
) -> tuple[list[_Job], list[int], list[int]]:
    """All files to render, and the 0-based sentence indices of voice A's and voice B's training halves."""
    if n_eval < 1 or n_eval > len(sentences) - 2:
        raise ValueError(
            f"n_eval must be between 1 and {len(sentences) - 2} (there are {len(sentences)} sentences), got {n_eval}"
        )
    rest = list(range(n_eval, len(sentences)))
    half = len(rest) // 2
    halves = [rest[:half], rest[half : 2 * half]]
    if n_train is not None:
        if not 1 <= n_train <= half:
            raise ValueError(f"n_train must be between 1 and {half} with n_eval={n_eval}, got {n_train}")
        halves = [indices[:n_train] for indices in halves]
    jobs = [_Job("eval", voice, f"e{i + 1:04d}", sentences[i]) for voice in voices for i in range(n_eval)]
    for voice, indices in zip(voices, halves):
        jobs += [_Job("train", voice, f"t{i + 1:04d}", sentences[i]) for i in indices]
    return jobs, halves[0], halves[1]


def _render(binary: str, job: _Job, dest: Path) -> None:
    """Synthesise one sentence with flite and place it atomically at ``dest / job.relpath`` (16 kHz WAV)."""
    out = dest / job.relpath

    def write(tmp: str) -> None:
        result = subprocess.run(
            [binary, "-voice", job.voice, "-t", job.text, "-o", tmp], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise DemoCorpusError(
                f"flite failed on {job.relpath} (voice {job.voice}, exit code {result.returncode}): "
                f"{result.stderr.strip()}"
            )
        try:
            wave, _ = load_audio(tmp, sample_rate=DEMO_SAMPLE_RATE)
        except AudioError as exc:
            raise DemoCorpusError(f"flite wrote unusable audio for {job.relpath} ({exc.problem})") from None
        info = sf.info(tmp)
        if (info.samplerate, info.channels, info.subtype) != (DEMO_SAMPLE_RATE, 1, "PCM_16"):
            sf.write(tmp, limit_peaks(wave), DEMO_SAMPLE_RATE, subtype="PCM_16")  # else keep flite's bytes

    atomic_write(out, write, suffix=".wav")


def _previous_texts(manifest_path: Path) -> dict[str, str]:
    """``{relpath: text}`` of the files an earlier run recorded as rendered (empty if none or unreadable)."""
    if not manifest_path.is_file():
        return {}
    try:
        manifest = read_json(manifest_path)
        return {
            entry["audio"]: entry["text"]
            for split in manifest["splits"].values()
            for entries in split.values()
            for entry in entries
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring unreadable %s; every file will be rendered again", manifest_path)
        return {}


def _manifest(jobs: list[_Job], voices: tuple[str, str], sentences: list[str], n_eval: int) -> dict:
    splits: dict[str, dict[str, list[dict[str, str]]]] = {
        split: {voice: [] for voice in voices} for split in _SPLIT_DIRS
    }
    for job in jobs:
        splits[job.split][job.voice].append({"id": job.uid, "text": job.text, "audio": job.relpath})
    return {
        "format_version": CORPUS_FORMAT_VERSION,
        "synthesizer": "flite",
        "sample_rate": DEMO_SAMPLE_RATE,
        "voices": {"A": voices[0], "B": voices[1]},
        "n_sentences": len(sentences),
        "n_eval": n_eval,
        "splits": splits,
    }


def _remove_stale(dest: Path, voices: tuple[str, str], keep: set[str]) -> None:
    """Delete demo files of these voices that the current plan does not list (left by other settings)."""
    for split_dir in _SPLIT_DIRS.values():
        for voice in voices:
            folder = dest / split_dir / voice
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if _OUR_FILE.fullmatch(path.name) and f"{split_dir}/{voice}/{path.name}" not in keep:
                    log.info("removing %s, not part of the corpus with the current settings", path)
                    path.unlink()


def make_demo_corpus(
    dest: str | os.PathLike,
    *,
    voices: tuple[str, str] = DEFAULT_VOICES,
    n_train: int | None = None,
    n_eval: int | None = None,
    progress: bool = True,
    flite: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Path:
    """Render the two-speaker demo corpus into ``dest`` with flite; return ``dest``.

    Args:
        dest: output folder (created); layout in the module docstring.
        voices: flite voices ``(A, B)``; see :func:`flite_voices`. Output not at 16 kHz (``kal``
            speaks at 8 kHz) is resampled.
        n_train: training sentences per voice (default: all of its half, 90 with the defaults).
        n_eval: parallel evaluation sentences (default :data:`DEFAULT_N_EVAL`). Changing it moves
            the evaluation/training boundary and therefore the training halves.
        progress: show a tqdm bar.
        flite: the flite executable (default: ``flite`` on ``PATH``).
        workers: parallel flite processes (default: ``min(4, CPU count)``).

    Raises:
        DemoCorpusError: flite is not installed or fails.
        ValueError: unknown or repeated voice, or ``n_train`` / ``n_eval`` out of range.
    """
    dest = Path(dest)
    voices = tuple(voices)
    if len(voices) != 2 or voices[0] == voices[1]:
        raise ValueError(f"voices must be two different flite voices, got {voices!r}")
    binary = _find_flite(flite)
    known = flite_voices(binary)
    for voice in voices:
        if voice not in known:
            raise ValueError(f"unknown flite voice {voice!r}; this flite has: {', '.join(known)}")
    sentences = load_sentences()
    n_eval = DEFAULT_N_EVAL if n_eval is None else n_eval
    jobs, half_a, half_b = _plan(sentences, voices, n_train, n_eval)
    assert not set(half_a) & set(half_b), "training halves must not share a sentence"

    manifest_path = dest / "corpus.json"
    previous = _previous_texts(manifest_path)
    done = [j for j in jobs if previous.get(j.relpath) == j.text and (dest / j.relpath).is_file()]
    finished = set(done)
    todo = [j for j in jobs if j not in finished]
    _remove_stale(dest, voices, {j.relpath for j in jobs})
    if done:
        log.info("%d of %d demo files already rendered; %d to render", len(done), len(jobs), len(todo))
    if todo:
        # Until everything is rendered, corpus.json lists only files known to be complete and current.
        atomic_write_json(manifest_path, _manifest(done, voices, sentences, n_eval))
        workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
            total=len(todo), unit="file", desc="flite", disable=not progress
        ) as bar:
            futures = [pool.submit(_render, binary, job, dest) for job in todo]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
            except BaseException:
                for other in futures:
                    other.cancel()
                raise
    atomic_write_json(manifest_path, _manifest(jobs, voices, sentences, n_eval))
    log.info(
        "demo corpus in %s: %s and %s, %d training sentences each, %d parallel evaluation sentences",
        dest,
        voices[0],
        voices[1],
        len(half_a),
        n_eval,
    )
    return dest

"""Batch conversion of files: inputs expanded, outputs planned, files converted (in worker processes when that pays).

:func:`convert` is the library function behind ``cyclegan-vc convert``. Each bad input is reported
with its reason and skipped; nothing is written for it. With ``jobs``, worker processes convert whole
files, or the chunks of a long file (then at most ``workers + 1`` chunks are in flight, so memory
stays bounded, and the joins are made in order in the calling process: the same output as without
workers).
"""

from __future__ import annotations

import errno
import glob
import itertools
import logging
import math
import os
import time
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import soundfile as sf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..audio import AUDIO_EXTENSIONS, AudioError
from ..directions import direction as _direction
from ..options import ConversionOptions
from ..pools import process_pool, stop_pool
from ..utils import WorkersDied, disk_full
from .converter import SegmentMap, VoiceConverter, load_converter
from .workers import convert_in_worker, init_worker, pooled_segments

__all__ = ["WORKER_AUDIO_SECONDS", "ConversionReport", "convert"]

log = logging.getLogger(__name__)

#: convert() with default jobs starts one worker process per this many seconds of audio in the batch at most
WORKER_AUDIO_SECONDS = 60.0


@dataclass
class ConversionReport:
    """What a batch conversion produced.

    Attributes:
        outputs: written files, in input order.
        failures: ``(input, reason)`` for every input that was skipped.
        audio_seconds: duration of the converted inputs (s).
        wall_seconds: wall time of the conversions (s), model loading excluded.
        stage_seconds: wall time per stage (``analysis``, ``network``, ``synthesis``).
    """

    outputs: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of audio (below 1 is faster than real time); NaN when nothing was converted."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def speed(self) -> str:
        """``"real-time factor 0.123"``, or ``"nothing converted"`` when there is no audio to divide by."""
        return f"real-time factor {self.real_time_factor:.3f}" if self.audio_seconds else "nothing converted"

    def summary(self) -> str:
        """A few lines: what was converted, how fast, and every failure with its reason."""
        lines = [
            f"converted {len(self.outputs)} file(s), {self.audio_seconds:.1f} s of audio in "
            f"{self.wall_seconds:.1f} s ({self.speed()})"
        ]
        if self.stage_seconds and self.audio_seconds:
            lines.append(
                "  real-time factor by stage: "
                + ", ".join(f"{k} {v / self.audio_seconds:.3f}" for k, v in self.stage_seconds.items())
            )
        if self.failures:
            lines.append(f"{len(self.failures)} input(s) failed:")
            lines += [f"  {path}: {reason}" for path, reason in self.failures]
        return "\n".join(lines)


# -- inputs and outputs ----------------------------------------------------------------------------
def _glob_base(pattern: str) -> Path:
    """The folder part of a glob pattern, before its first component with a wildcard."""
    parts = list(itertools.takewhile(lambda part: not glob.has_magic(part), Path(pattern).parts))
    return Path(*parts) if parts else Path(".")


def _expand(item: str | os.PathLike, exclude: Path | None = None) -> tuple[list[tuple[Path, Path]], str | None]:
    """One input -> ``([(file, output name relative to out)], problem or None)``.

    A folder's audio files (recursive; hidden files and ``exclude``, the output folder, left out)
    keep their path relative to the folder; a glob's matches their path relative to the pattern's
    folder part (``data/**/*.wav`` -> ``spk1/a.wav``); a file its name.
    """
    path = Path(item)
    if path.is_dir():
        root = path.resolve()
        files = sorted(
            p
            for p in path.rglob("*")
            if (p.is_file() or p.is_symlink())  # a broken link is reported, not silently left out
            and p.suffix.lower() in AUDIO_EXTENSIONS
            and not p.name.startswith(".")
            and not (exclude is not None and Path(os.path.realpath(p)).is_relative_to(exclude) and not root.is_relative_to(exclude))
        )
        if not files:
            return [], f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder"
        return [(p, p.relative_to(path)) for p in files], None
    if path.exists():
        return [(path, Path(path.name))], None
    if glob.has_magic(str(item)):
        base = _glob_base(str(item))
        matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True)) if Path(m).is_file()]
        if not matches:
            return [], "no files match this pattern"
        return [(m, m.relative_to(base) if m.is_relative_to(base) else Path(m.name)) for m in matches], None
    return [], "no such file or folder"


def _duration(path: Path) -> float:
    """Seconds of audio in a file, 0 when its header cannot be read (the conversion reports why)."""
    try:
        return float(sf.info(str(path)).duration)
    except Exception:
        return 0.0


def _plan(files: list[tuple[Path, Path]], out: Path) -> list[tuple[Path, Path, str | None]]:
    """``(input, output, problem or None)`` for every file: an output that is the input itself, or
    that an earlier input's conversion would write, is a problem decided before any work (so the
    result does not depend on the order in which parallel workers finish). The same input given twice
    (a file and a folder holding it, say) is converted once."""
    planned: dict[Path, Path] = {}  # resolved output -> the input that writes it
    plan = []
    for path, rel in files:
        target = out / rel.with_suffix(".wav")
        key = Path(os.path.realpath(target))
        if key in planned and os.path.realpath(planned[key]) == os.path.realpath(path):
            continue
        if key in planned:
            problem = f"output {target} would overwrite the conversion of {planned[key]}"
        elif key == Path(os.path.realpath(path)):
            problem = "output would overwrite the input (choose another output folder)"
        else:
            problem = None
            planned[key] = path
        plan.append((path, target, problem))
    return plan


def convert_one(
    converter: VoiceConverter,
    path: Path,
    target: Path,
    direction: str,
    keep_rate: bool,
    on_chunk: Callable[[float], None],
    segments: SegmentMap | None = None,
) -> str | None:
    """Convert one file (its chunks by ``segments`` when given); return why it failed, or ``None``."""
    try:
        converter.convert_file(path, target, direction, keep_rate=keep_rate, on_chunk=on_chunk, segments=segments)
    except AudioError as exc:
        return exc.problem
    except BrokenProcessPool:  # the workers died: not this file's fault
        raise
    except OSError as exc:
        if disk_full(exc, target.parent):  # every other file would fail alike: stop the batch
            raise OSError(errno.ENOSPC, f"no space left on the disk writing {target}", str(target)) from None
        log.debug("conversion of %s failed", path, exc_info=True)
        return f"cannot write {target}: {exc.strerror or exc}"
    except Exception as exc:  # one bad file must not end the batch
        log.debug("conversion of %s failed", path, exc_info=True)
        return f"conversion failed: {type(exc).__name__}: {exc}"
    return None


# -- the batch -------------------------------------------------------------------------------------
def convert(
    model: str | os.PathLike | VoiceConverter,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    direction: str = "A2B",
    device: str = "auto",
    keep_rate: bool = False,
    options: ConversionOptions | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert every input into ``out`` as ``<name>.wav``; bad inputs are reported and skipped.

    Args:
        model: run directory, exported model file or a loaded :class:`VoiceConverter`.
        inputs: audio files, folders (recursive; sub-paths are kept under ``out``) or glob patterns
            (matches keep their path below the pattern's folder part).
        out: output folder.
        direction: ``"A2B"`` or ``"B2A"``.
        device: where the generators run (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
        keep_rate: write at each input's sample rate instead of the model's.
        options: how the output is made, the F0 estimator included
            (:class:`~cyclegan_vc.options.ConversionOptions`); ``None`` keeps a given converter's
            options, or the paper's conversion for a model loaded here.
        jobs: worker processes, each with one torch thread (default: all cores, but at most one per
            :data:`WORKER_AUDIO_SECONDS` of audio in the batch, since starting a worker costs about as
            much as converting 15 s; 1: in this process). Files long enough to be converted in several
            chunks come first, one at a time, their chunks converted by the workers (read, joined
            and written here: the same output); then the others, a file per worker. Used when
            ``model`` is a path, there is more than one file or chunk, and the model runs on the CPU;
            otherwise the files are converted here, one by one.
            Workers are started with "spawn": a script that calls this must do so under
            ``if __name__ == "__main__":``.
        progress: show a progress bar (seconds of audio, with the running real-time factor; with
            workers it advances by whole files).

    Returns:
        A :class:`ConversionReport`; every failure (missing input, unreadable/empty/silent file,
        name collision, conversion error) is listed with its reason, in input order. Nothing is
        written for a failed input. ``real_time_factor`` is the batch's wall time over its audio (with
        workers below the one-core figure); ``stage_seconds`` add up every process's time.

    Raises:
        WorkersDied: a worker process died (not one file's fault; see :class:`~cyclegan_vc.utils.WorkersDied`).
    """
    _direction(direction)
    if jobs is not None and (isinstance(jobs, bool) or int(jobs) != jobs or jobs < 1):
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    converter = load_converter(model, device, options)
    out = Path(out)
    report = ConversionReport()
    files: list[tuple[Path, Path]] = []
    for item in inputs:
        found, problem = _expand(item, exclude=out.resolve())
        if problem:
            report.failures.append((Path(item), problem))
            log.warning("skipped %s: %s", item, problem)
        files += found
    plan = _plan(files, out)
    seconds = {path: _duration(path) for path, _ in files}
    work = [path for path, _, problem in plan if problem is None]
    if jobs is None:  # all cores, but no more workers than minutes of audio: a worker's start costs seconds
        jobs = max(1, min(os.cpu_count() or 1, int(sum(seconds[p] for p in work) // WORKER_AUDIO_SECONDS)))
    # a file converted in several chunks (longer than 1.5 chunks) can keep several workers busy
    long = {p for p in work if seconds[p] > 1.5 * converter.chunk_seconds}
    units = sum(math.ceil(seconds[p] / converter.chunk_seconds) if p in long else 1 for p in work)
    workers = min(jobs, units)
    use_pool = workers > 1 and not isinstance(model, VoiceConverter) and converter.device.type == "cpu"

    problems: dict[int, str | None] = {}  # input index -> its problem, None when converted; filled as files finish
    timings_before = dict(converter.timings)  # this process's and the workers' seconds per stage add up there
    start = time.perf_counter()
    bar = tqdm(
        total=sum(seconds.values()),
        desc=f"converting {direction}",
        unit="s",
        disable=not progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}{postfix}]",
    )

    def finished(index: int, problem: str | None) -> None:
        problems[index] = problem
        path = plan[index][0]
        if problem is None:
            report.audio_seconds += seconds[path]
        else:
            log.warning("skipped %s: %s", path, problem)
        report.wall_seconds = time.perf_counter() - start
        failed = sum(p is not None for p in problems.values())
        bar.set_postfix_str(f"file {len(problems)}/{len(plan)}, {report.speed()}, {failed} failed")

    with logging_redirect_tqdm() if progress else nullcontext(), bar:
        for index, (path, _, problem) in enumerate(plan):
            if problem is not None:
                bar.update(seconds[path])
                finished(index, problem)
        todo = [(i, path, target) for i, (path, target, problem) in enumerate(plan) if problem is None]

        def in_order(files: list[tuple[int, Path, Path]], segments: SegmentMap | None = None) -> None:
            """Files one after another, read, joined and written here (their chunks by ``segments``)."""
            for index, path, target in files:
                end_of_file = bar.n + seconds[path]

                def advance(chunk_seconds: float, limit: float = end_of_file) -> None:
                    bar.update(max(0.0, min(chunk_seconds, limit - bar.n)))

                problem = convert_one(converter, path, target, direction, keep_rate, advance, segments)
                advance(seconds[path])  # the rest of this file's share, also after a failure
                finished(index, problem)

        if use_pool:
            pool = process_pool(workers, init_worker, (str(model), converter.options, "cpu"))
            try:  # long files first, chunk by chunk
                in_order([item for item in todo if item[1] in long], pooled_segments(converter, pool, workers + 1))
                futures = {  # then the others, a file per worker
                    pool.submit(convert_in_worker, path, target, direction, keep_rate): (i, path)
                    for i, path, target in todo
                    if path not in long
                }
                for future in as_completed(futures):
                    index, path = futures[future]
                    problem, timings = future.result()
                    converter.add_timings(timings)
                    bar.update(seconds[path])
                    finished(index, problem)
            except BrokenProcessPool as exc:  # not one file's fault: every pending file would fail alike
                raise WorkersDied("convert()") from exc
            finally:  # also on an interrupt or a full disk: files not yet started are not started
                stop_pool(pool)
        else:
            in_order(todo)
    report.wall_seconds = time.perf_counter() - start
    report.stage_seconds = {k: v - timings_before.get(k, 0.0) for k, v in converter.timings.items()}
    for index, (path, target, _) in enumerate(plan):
        if problems[index] is None:
            report.outputs.append(target)
        else:
            report.failures.append((path, problems[index]))
    log.info(
        "converted %d file(s) (%.1f s of audio, %s) into %s with %d process(es); %d failure(s)",
        len(report.outputs), report.audio_seconds, report.speed(), out, workers if use_pool else 1,
        len(report.failures),
    )
    return report

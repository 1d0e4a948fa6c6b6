"""The prepare stage: parallel WORLD analysis of two speakers' folders, a content-keyed cache,
per-speaker statistics and a manifest.

Output directory layout::

    OUT/manifest.json     what was produced: feature settings, utterances per role and split, skips
    OUT/stats.json        {"A": SpeakerStats, "B": SpeakerStats}, from the training split only
    OUT/cache/<key>.npz   one per utterance: f0 (T,) Hz, mcep (T, D), ap_coded (T, bands)

Role "A" is the source speaker, "B" the target. The cache key hashes the file's bytes together with
the feature settings, so a rerun analyses nothing and a changed setting recomputes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .audio import AudioError, load_audio
from .data.corpus import list_audio_files, utterance_id
from .data.corpus import paper_split as apply_paper_split
from .features import FeatureConfig, analyze, encode_aperiodicity
from .pools import process_pool, stop_pool
from .stats import SpeakerStats, StatsAccumulator
from .utils import (
    OutsideFailure,
    UserError,
    WorkersDied,
    atomic_save_npz,
    atomic_write_json,
    read_json,
    remove_stale_temporaries,
)

__all__ = [
    "MANIFEST_VERSION",
    "feature_config",
    "format_summary",
    "load_features",
    "load_manifest",
    "load_stats",
    "prepare",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
#: Bumped whenever the content of a cached ``.npz`` changes meaning.
CACHE_VERSION = 1
ROLES = ("A", "B")


@dataclass(frozen=True)
class _Job:
    role: str
    split: str
    audio: Path
    uid: str
    key: str


def cache_key(path: Path, config: FeatureConfig) -> str:
    """sha256 of the file's bytes, the feature settings and the cache version (32 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps({"features": config.to_dict(), "cache": CACHE_VERSION}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _analyze_to_cache(audio: str, dest: str, config: dict) -> tuple[int, float] | str:
    """Worker: analyse one file into ``dest``; returns (frames, seconds) or the error message."""
    cfg = FeatureConfig.from_dict(config)
    try:
        wave, rate = load_audio(audio, cfg.sample_rate)
    except AudioError as exc:
        return exc.problem
    feats = analyze(wave, cfg)
    try:
        atomic_save_npz(
            dest,
            f0=feats.f0,
            mcep=feats.mcep.astype(np.float32),
            ap_coded=encode_aperiodicity(feats.ap, cfg).astype(np.float32),
        )
    except OSError as exc:  # the output's fault (a full disk, no permission), not the recording's
        why = os.strerror(exc.errno) if exc.errno else str(exc)  # ENOSPC: "No space left on device"
        raise CacheWriteError(f"cannot write the feature cache {dest}: {why}") from None
    return feats.n_frames, wave.size / rate


class CacheWriteError(OutsideFailure):
    """A feature file could not be written (a full disk, no permission): the whole run stops, since
    every other file would fail alike; nothing is skipped silently."""


def _load_cached(npz: Path, job: "_Job", config: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(f0, mcep)`` of a cache file; a damaged one (torn, bit-flipped, not an npz) is analysed again."""
    try:
        with np.load(npz) as data:
            return data["f0"], data["mcep"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("damaged cache file %s (%s): analysing %s again", npz, exc, job.audio)
    npz.unlink(missing_ok=True)
    result = _analyze_to_cache(str(job.audio), str(npz), config.to_dict())
    if isinstance(result, str):
        raise AudioError(job.audio, result)
    with np.load(npz) as data:
        return data["f0"], data["mcep"]


def _collect(folder: Path | None) -> list[tuple[Path, str]]:
    if folder is None:
        return []
    root = Path(folder)
    return [(p, utterance_id(p, root)) for p in list_audio_files(root)]


def prepare(
    source: str | os.PathLike,
    target: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source_eval: str | os.PathLike | None = None,
    target_eval: str | os.PathLike | None = None,
    paper_split: bool = False,
    f0: str | None = None,
    jobs: int | None = None,
    features: FeatureConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Analyse a source (A) and a target (B) speaker's audio folders into ``out``.

    Args:
        source, target: folders of training audio, one speaker each (searched recursively).
        out: the prepared-data directory (created; the cache inside it is reused).
        source_eval, target_eval: optional held-out folders; same file names = same sentence.
        paper_split: keep the first half of the source's files and the second half of the target's,
            the paper's non-parallel protocol for a parallel corpus.
        f0: ``"harvest"`` or ``"dio"``; overrides ``features.f0_method``.
        jobs: worker processes (default: all cores); 1 analyses in this process.
        features: feature settings (default :class:`FeatureConfig`).
        cache_dir: where the per-utterance ``.npz`` files go (default ``out/cache``); several
            prepared directories may share one cache, since keys include content and settings.

    Returns:
        The manifest (also written to ``out/manifest.json``), with ``run`` counts of analysed,
        cached and skipped files.
    """
    if Path(source).resolve() == Path(target).resolve():
        raise UserError(f"--source and --target are the same folder ({source}): give one folder per speaker")
    if (source_eval is None) != (target_eval is None):
        given = "source_eval" if source_eval is not None else "target_eval"
        raise UserError(f"{given} given alone: evaluation needs held-out audio of both speakers (source_eval and target_eval)")
    config = features or FeatureConfig()
    if f0 is not None:
        config = config.replace(f0_method=f0)
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "cache"
    for folder in (out, cache_dir):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is a file: the prepared data (and its cache) go into a folder")
    cache_dir.mkdir(parents=True, exist_ok=True)
    for tmp in remove_stale_temporaries(cache_dir):  # what a killed run was writing
        log.info("removed %s, left by a process that was killed while writing it", tmp)

    listing: dict[tuple[str, str], list[tuple[Path, str]]] = {
        ("A", "train"): _collect(Path(source)),
        ("B", "train"): _collect(Path(target)),
        ("A", "eval"): _collect(source_eval and Path(source_eval)),
        ("B", "eval"): _collect(target_eval and Path(target_eval)),
    }
    if paper_split:
        a, b = apply_paper_split(listing[("A", "train")], listing[("B", "train")])
        listing[("A", "train")], listing[("B", "train")] = list(a), list(b)

    all_jobs, unreadable = [], []
    for (role, split), files in listing.items():
        for path, uid in files:
            try:  # a dangling symlink, a symlink loop, a file without read permission: reported, skipped
                all_jobs.append(_Job(role, split, path.resolve(), uid, cache_key(path, config)))
            except (OSError, RuntimeError) as exc:  # RuntimeError: Path.resolve on a symlink loop (Python < 3.13)
                reason = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
                unreadable.append({"audio": str(path.absolute()), "role": role, "split": split, "reason": reason})
                log.warning("skipped %s: %s", path, reason)
    todo = {}
    for job in all_jobs:
        if not (cache_dir / f"{job.key}.npz").exists():
            todo.setdefault(job.key, job)  # identical files are analysed once
    results: dict[str, tuple[int, float] | str] = {}
    jobs = max(1, jobs or os.cpu_count() or 1)
    bar = tqdm(total=len(todo), desc="analysing", unit="file", disable=not progress or not todo)
    try:
        if jobs == 1 or len(todo) <= 1:
            for key, job in todo.items():
                results[key] = _analyze_to_cache(str(job.audio), str(cache_dir / f"{key}.npz"), config.to_dict())
                bar.update()
        else:
            pool = process_pool(min(jobs, len(todo)))
            try:
                futures = {
                    pool.submit(_analyze_to_cache, str(job.audio), str(cache_dir / f"{key}.npz"), config.to_dict()): key
                    for key, job in todo.items()
                }
                for fut in as_completed(futures):
                    key = futures[fut]
                    try:
                        results[key] = fut.result()
                    except BrokenProcessPool as exc:  # not this file's fault: every pending file would fail alike
                        raise WorkersDied("prepare()") from exc
                    except CacheWriteError:
                        raise
                    except Exception as exc:  # an analysis crash in one file must not end the run
                        results[key] = f"analysis failed: {exc}"
                    bar.update()
            finally:  # also on Ctrl-C or a full disk: files not started are not started
                stop_pool(pool)
    finally:
        bar.close()

    speakers = {
        role: {"name": Path(source if role == "A" else target).name, "train": [], "eval": []} for role in ROLES
    }
    skipped = list(unreadable)
    accumulators = {role: StatsAccumulator() for role in ROLES}
    for job in all_jobs:
        npz = cache_dir / f"{job.key}.npz"
        result = results.get(job.key)
        if isinstance(result, str):
            skipped.append({"audio": str(job.audio), "role": job.role, "split": job.split, "reason": result})
            log.warning("skipped %s: %s", job.audio, result)
            continue
        f0_arr, mcep = _load_cached(npz, job, config)
        frames = int(f0_arr.shape[0])
        speakers[job.role][job.split].append(
            {
                "id": job.uid,
                "audio": str(job.audio),
                "features": _relative_or_absolute(npz, out),
                "frames": frames,
                "seconds": round(frames * config.frame_period / 1000.0, 3),
            }
        )
        if job.split == "train":
            accumulators[job.role].add(f0_arr, mcep)

    stats = {}
    for role in ROLES:
        if not speakers[role]["train"]:
            raise ValueError(
                f"no usable training audio for speaker {role} ({source if role == 'A' else target}); "
                f"{len(skipped)} file(s) skipped"
            )
        stats[role] = accumulators[role].result().to_dict()

    analysed = sum(1 for r in results.values() if not isinstance(r, str))
    manifest = {
        "format_version": MANIFEST_VERSION,
        "package_version": __version__,
        "features": config.to_dict(),
        "paper_split": bool(paper_split),
        "speakers": speakers,
        "skipped": skipped,
        "run": {"analysed": analysed, "cached": len(all_jobs) - (len(skipped) - len(unreadable)) - analysed, "skipped": len(skipped)},
    }
    atomic_write_json(out / "stats.json", stats)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _relative_or_absolute(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path.resolve())


def load_manifest(prepared_dir: str | os.PathLike) -> dict:
    """Read ``manifest.json``; raise a clear error when it is missing or of another format."""
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `cyclegan-vc prepare` first")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a manifest (a JSON {type(manifest).__name__}, expected an object)")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise UserError(f"{path}: manifest format {manifest.get('format_version')}, expected {MANIFEST_VERSION}")
    speakers = manifest.get("speakers")
    if not isinstance(manifest.get("features"), dict) or not isinstance(speakers, dict) or not all(
        isinstance(speakers.get(role), dict) and isinstance(speakers[role].get("train"), list) for role in ROLES
    ):
        raise UserError(f"{path}: a damaged manifest (its features or speakers are missing); run `cyclegan-vc prepare` again")
    return manifest


def load_stats(prepared_dir: str | os.PathLike) -> dict[str, SpeakerStats]:
    """Per-role statistics ``{"A": SpeakerStats, "B": SpeakerStats}``."""
    path = Path(prepared_dir) / "stats.json"
    raw = read_json(path)
    try:
        return {role: SpeakerStats.from_dict(raw[role]) for role in ROLES}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: damaged speaker statistics ({type(exc).__name__}: {exc}); run `cyclegan-vc prepare` again") from None


def feature_config(prepared_dir: str | os.PathLike) -> FeatureConfig:
    return FeatureConfig.from_dict(load_manifest(prepared_dir)["features"])


def load_features(prepared_dir: str | os.PathLike, entry: dict) -> dict[str, np.ndarray]:
    """The cached arrays of one manifest entry: ``f0`` (T,), ``mcep`` (T, D), ``ap_coded`` (T, bands)."""
    path = Path(prepared_dir) / entry["features"]
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise UserError(f"{path}: a feature file of the manifest is missing; run `cyclegan-vc prepare` again") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(
            f"{path}: a damaged feature file ({type(exc).__name__}: {exc}); run `cyclegan-vc prepare` again, "
            "which analyses it anew"
        ) from None
    missing = {"f0", "mcep"} - set(arrays)
    if missing:
        raise UserError(f"{path}: a damaged feature file (no {', '.join(sorted(missing))}); run `cyclegan-vc prepare` again")
    return arrays


def format_summary(manifest: dict) -> str:
    """A plain-text table: files and minutes per speaker and split, then every skipped file."""
    lines = [f"{'role':<5}{'speaker':<16}{'split':<7}{'files':>7}{'minutes':>9}"]
    for role in ROLES:
        spk = manifest["speakers"][role]
        for split in ("train", "eval"):
            entries = spk[split]
            minutes = sum(e["seconds"] for e in entries) / 60.0
            lines.append(f"{role:<5}{spk['name']:<16}{split:<7}{len(entries):>7}{minutes:>9.2f}")
    run = manifest.get("run", {})
    lines.append(
        f"analysed {run.get('analysed', 0)}, from cache {run.get('cached', 0)}, skipped {run.get('skipped', 0)}"
    )
    for s in manifest["skipped"]:
        lines.append(f"  skipped {s['audio']} ({s['role']}/{s['split']}): {s['reason']}")
    return "\n".join(lines)

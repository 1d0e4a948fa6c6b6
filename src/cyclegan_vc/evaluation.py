"""The ``evaluate`` stage: convert a parallel held-out set both ways and score it beside baselines.

For each direction (``A2B``: the model's speaker A to B, ``B2A`` the reverse) and each sentence present
for both speakers (same utterance id), four systems are scored against the real target recording of
that sentence (conventions in :mod:`cyclegan_vc.metrics`):

============================  ====================================================================
``cyclegan``                  the model: WORLD analysis of the source, generator MCEPs, log-Gaussian
                              F0, source aperiodicity, WORLD synthesis (as ``cyclegan-vc convert``)
``no_conversion``             the source recording itself (the distance to beat)
``mean_variance``             per-dimension MCEP mean/variance conversion with the same F0 transform
                              (the linear baseline CycleGAN-VC must beat)
``world_resynthesis``         WORLD analysis-resynthesis of the target recording (the vocoder's floor)
============================  ====================================================================

Output directory::

    OUT/metrics.json, OUT/summary.md, OUT/report.html, OUT/audio/   (see cyclegan_vc.report)
    OUT/converted/A2B/<id>.wav, OUT/converted/B2A/<id>.wav          every converted sentence

Speaker similarity needs recordings of each speaker that are not the evaluated sentences: by default
up to ``n_references`` training recordings listed by the run's prepared data (``RUN/data.json``), or
the folders given as ``source_refs`` / ``target_refs``.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .audio import AudioError, load_audio, save_audio
from .conversion import VoiceConverter, load_converter, load_in_worker
from .data.corpus import list_audio_files, match_parallel, utterance_id
from .directions import DIRECTIONS
from .features import FeatureConfig, WorldFeatures, analyze, analyze_envelope, synthesize
from .metrics import SYSTEMS, DirectionResults, EvaluationResults, Evaluator, conventions, mean_variance_convert
from .options import ConversionOptions
from .pools import process_pool, stop_pool
from .prepare import load_manifest
from .report import ReportExample, format_table, write_report
from .utils import WorkersDied, read_json

__all__ = ["EvaluationRun", "evaluate", "training_references"]

log = logging.getLogger(__name__)

@dataclass
class EvaluationRun:
    """What :func:`evaluate` produced.

    Attributes:
        results: per-utterance metrics of every system in both directions.
        files: report files written (relative name -> path).
        failures: ``(file, reason)`` of every evaluation recording that could not be used.
        seconds: wall time of the whole evaluation.
    """

    results: EvaluationResults
    files: dict[str, Path] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def report(self) -> Path:
        return self.files["report.html"]

    def table(self) -> str:
        """The summary table (means per direction and system) as plain text."""
        return format_table(self.results)


def training_references(model: str | os.PathLike, limit: int = 20) -> dict[str, list[Path]]:
    """Training recordings of each role listed by the run's prepared data (``RUN/data.json``).

    Returns ``{"A": [...], "B": [...]}`` (evenly spaced, at most ``limit`` each), or empty lists when the
    model is not a run directory or its prepared data has moved or is of another format (logged).
    """
    refs: dict[str, list[Path]] = {"A": [], "B": []}
    run = Path(model)
    run = run if run.is_dir() else run.parent
    info = run / "data.json"
    if not info.is_file():
        return refs
    prepared = Path(read_json(info)["prepared"])
    try:
        speakers = load_manifest(prepared)["speakers"]
    except (FileNotFoundError, ValueError) as exc:
        log.warning("no training recordings for the speaker embeddings (%s names %s): %s", info, prepared, exc)
        return refs
    for role in ("A", "B"):
        files = [Path(e["audio"]) for e in speakers[role]["train"] if Path(e["audio"]).is_file()]
        if files:
            picks = np.unique(np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int))
            refs[role] = [files[i] for i in picks]
    return refs


def _load_many(paths: Sequence[Path], rate: int, failures: list[tuple[str, str]]) -> list[np.ndarray]:
    waves = []
    for path in paths:
        try:
            waves.append(load_audio(path, sample_rate=rate)[0])
        except AudioError as exc:
            failures.append((str(path), exc.problem))
            log.warning("skipped %s", exc)
    return waves


def _synthesize(feats: WorldFeatures, config: FeatureConfig, samples: int) -> np.ndarray:
    wave = synthesize(feats, config)
    if len(wave) < samples:
        wave = np.pad(wave, (0, samples - len(wave)))
    return wave[:samples]


def _sentence(converter: VoiceConverter, evaluator: Evaluator, waves: dict[str, np.ndarray]):
    """Every system's waveform for one sentence (``{"A": wave, "B": wave}``) in both directions
    (``{direction: {system: wave}}``), and the evaluator's analysis of each distinct waveform (WORLD,
    speaker embedding, DNSMOS: the expensive parts, done here so that they can run in a worker).

    Each recording's F0 and envelope are estimated once: they serve as the source of one direction,
    the resynthesis baseline of the other, and the metrics' reference (the same numbers as analysing
    it three times). With ``converter.f0_range == "speaker"`` the two systems that convert the input
    (``cyclegan``, ``mean_variance``) analyse it as the converter does, in the source speaker's F0
    range; the references and the resynthesis baseline keep the full range."""
    config = converter.features
    rate = config.sample_rate
    envelopes = {role: analyze_envelope(wave, config) for role, wave in waves.items()}
    feats = {role: analyze(wave, config, envelope=envelopes[role]) for role, wave in waves.items()}
    inputs = feats
    in_config = converter.analysis_config()
    if converter.f0_range != "full" or in_config != config:
        inputs = {
            d.source: analyze(waves[d.source], in_config, f0_range=converter.f0_search_range(d.name))
            for d in DIRECTIONS.values()
        }
    resynth = {role: _synthesize(feats[role], config, len(wave)) for role, wave in waves.items()}
    systems: dict[str, dict[str, np.ndarray]] = {}
    analysed = [(wave, evaluator.analysis(wave, rate, envelopes[role])) for role, wave in waves.items()]
    for direction, (_, src, tgt, _, _) in DIRECTIONS.items():
        source = waves[src]
        converted = _synthesize(converter.convert_features(inputs[src], direction), config, len(source))
        mcep, f0 = mean_variance_convert(inputs[src].mcep, inputs[src].f0, converter.stats[src], converter.stats[tgt])
        linear = _synthesize(WorldFeatures(f0=f0, mcep=mcep, ap=inputs[src].ap), config, len(source))
        systems[direction] = {
            "cyclegan": converted, "no_conversion": source, "mean_variance": linear, "world_resynthesis": resynth[tgt],
        }
        analysed += [(w, evaluator.analysis(w, rate)) for w in (converted, linear, resynth[tgt])]
    return systems, analysed


_WORKER: dict = {}


def _init_worker(
    model: str, speaker_similarity: bool, naturalness: bool, options: ConversionOptions, device: str = "cpu"
) -> None:
    converter = load_in_worker(model, options, device)
    _WORKER["converter"] = converter
    _WORKER["evaluator"] = Evaluator(converter.features, speaker_similarity=speaker_similarity, naturalness=naturalness)


def _sentence_in_worker(waves: dict[str, np.ndarray]):
    return _sentence(_WORKER["converter"], _WORKER["evaluator"], waves)


def _conventions(converter: VoiceConverter) -> dict[str, str]:
    out = conventions(converter.features)
    out["Conversion"] = (
        "cyclegan: log-Gaussian F0 transform, aperiodicity copied, mel-cepstra through the generator; "
        + converter.options.describe()
        + (" References in the full F0 range." if converter.f0_range == "speaker" else "")
    )
    return out


def evaluate(
    model: str | os.PathLike | VoiceConverter,
    source_eval: str | os.PathLike,
    target_eval: str | os.PathLike,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    source_refs: str | os.PathLike | None = None,
    target_refs: str | os.PathLike | None = None,
    n_references: int = 20,
    n_examples: int = 3,
    speaker_similarity: bool = True,
    naturalness: bool = True,
    evaluator: Evaluator | None = None,
    jobs: int | None = None,
    options: ConversionOptions | None = None,
    progress: bool = True,
) -> EvaluationRun:
    """Convert every parallel evaluation sentence both ways and score it beside the baselines.

    Args:
        model: run directory, exported model file, or a loaded :class:`VoiceConverter`.
        source_eval, target_eval: recordings of the model's speaker A and B; files with the same
            utterance id (name without extension, relative to the folder) are the same sentence.
        out: report directory (see the module docstring).
        device: where the generators run.
        source_refs, target_refs: folders of other recordings of A and B for the speaker embeddings;
            default: the run's training recordings (:func:`training_references`), else the evaluation
            recordings themselves (logged as a warning: then similarity is measured on seen sentences).
        n_references: at most this many reference recordings per speaker.
        n_examples: sentences per direction shown with plots and players in ``report.html``.
        speaker_similarity, naturalness: compute the resemblyzer and DNSMOS metrics.
        evaluator: a loaded :class:`~cyclegan_vc.metrics.Evaluator` to reuse (models, caches).
        jobs: processes for the conversions and WORLD analyses (default: all cores; 1 = in this
            process). The speaker encoder and DNSMOS run in this process.
        options: how the ``cyclegan`` system converts (:class:`~cyclegan_vc.options.ConversionOptions`);
            ``None``: a given converter's options, else the paper's conversion.
        progress: show progress bars.

    Raises:
        ValueError: no sentence is present for both speakers (the message names both folders).
    """
    start = time.perf_counter()
    converter = load_converter(model, device, options)
    rate = converter.sample_rate
    out = Path(out)
    source_eval, target_eval = Path(source_eval), Path(target_eval)
    pairs = match_parallel(list_audio_files(source_eval), list_audio_files(target_eval), source_eval, target_eval)
    if not pairs:
        raise ValueError(f"no sentence has a recording in both {source_eval} and {target_eval} (same file name)")
    failures: list[tuple[str, str]] = []

    # Load each sentence of both speakers once; a bad file drops its sentence and is reported.
    sentences: list[tuple[str, dict[str, np.ndarray]]] = []
    for path_a, path_b in pairs:
        waves = {}
        for role, path in (("A", path_a), ("B", path_b)):
            try:
                waves[role] = load_audio(path, sample_rate=rate)[0]
            except AudioError as exc:
                failures.append((str(path), exc.problem))
                log.warning("skipped sentence %s: %s", path.stem, exc)
        if len(waves) == 2:
            sentences.append((utterance_id(path_a, source_eval), waves))
    if not sentences:
        raise ValueError(f"none of the {len(pairs)} evaluation sentences could be read; failures: {failures}")

    refs: dict[str, list[np.ndarray]] = {"A": [], "B": []}
    if speaker_similarity:
        given = {"A": source_refs, "B": target_refs}
        found = training_references(model, n_references) if not isinstance(model, VoiceConverter) else {"A": [], "B": []}
        for role in ("A", "B"):
            paths = list_audio_files(given[role])[:n_references] if given[role] is not None else found[role]
            refs[role] = _load_many(paths, rate, failures)
            if not refs[role]:
                log.warning(
                    "no reference recordings of speaker %s beyond the evaluation set: its speaker embedding "
                    "uses the evaluated sentences themselves", converter.speakers[role],
                )
                refs[role] = [w[role] for _, w in sentences]

    evaluator = evaluator or Evaluator(
        converter.features, speaker_similarity=speaker_similarity, naturalness=naturalness
    )
    results = EvaluationResults(meta={
        "model": str(model) if not isinstance(model, VoiceConverter) else "VoiceConverter",
        "model_step": converter.step,
        "speakers": dict(converter.speakers),
        "source_eval": str(source_eval),
        "target_eval": str(target_eval),
        "sentences": len(sentences),
        "features": converter.features.to_dict(),
        "references": {role: len(refs[role]) for role in refs},
        "energy": converter.energy,
        "smooth": converter.smooth,
        "f0_range": converter.f0_range,
        "options": converter.options.to_dict(),
    })
    examples: list[ReportExample] = []
    use_pool = jobs != 1 and len(sentences) > 1 and not isinstance(model, VoiceConverter)
    pool = None
    if use_pool:
        workers = min(jobs or os.cpu_count() or 1, len(sentences))
        pool = process_pool(
            workers, _init_worker, (str(model), speaker_similarity, naturalness, converter.options, str(converter.device))
        )
    try:
        if pool is not None:
            futures = [pool.submit(_sentence_in_worker, waves) for _, waves in sentences]
            outputs = (f.result() for f in futures)
        else:
            outputs = (_sentence(converter, evaluator, waves) for _, waves in sentences)
        per_direction: dict[str, dict[str, list]] = {d: {name: [] for name in SYSTEMS} for d in DIRECTIONS}
        for (uid, waves), (systems, analysed) in tqdm(
            zip(sentences, outputs), total=len(sentences), desc="convert + analyse", unit="sentence", disable=not progress
        ):
            for wave, analysis in analysed:
                evaluator.prime(wave, rate, analysis)
            for direction, (_, src, tgt, _, _) in DIRECTIONS.items():
                system_waves = systems[direction]
                save_audio(out / "converted" / direction / f"{uid}.wav", system_waves["cyclegan"], rate)
                for name in SYSTEMS:
                    per_direction[direction][name].append((uid, waves[src], system_waves[name], waves[tgt]))
                if sum(e.direction == direction for e in examples) < n_examples:
                    examples.append(ReportExample(direction, uid, {
                        "source": waves[src], "converted": system_waves["cyclegan"],
                        "mean_variance": system_waves["mean_variance"], "target": waves[tgt],
                    }, rate))
    except BrokenProcessPool as exc:
        raise WorkersDied("evaluate()") from exc
    finally:
        if pool is not None:
            stop_pool(pool)
    examples.sort(key=lambda e: list(DIRECTIONS).index(e.direction))  # all of A2B, then B2A
    for direction, (_, src, tgt, _, _) in DIRECTIONS.items():
        block = DirectionResults(source=converter.speakers[src], target=converter.speakers[tgt])
        for name, items in per_direction[direction].items():
            block.systems[name] = evaluator.evaluate_pairs(
                items, target_refs=refs[tgt] if speaker_similarity else (),
                source_refs=refs[src] if speaker_similarity else (), sample_rate=rate,
                desc=f"{direction} {name}", progress=progress,
            )
        results.directions[direction] = block
    results.meta["failures"] = [{"file": f, "problem": p} for f, p in failures]
    files = write_report(
        out, results,
        title=f"CycleGAN-VC evaluation: {converter.speakers['A']} <-> {converter.speakers['B']}",
        conventions=_conventions(converter), examples=examples, feature_config=converter.features,
    )
    seconds = time.perf_counter() - start
    for path, problem in failures:
        log.error("failed: %s: %s", path, problem)
    log.info("evaluated %d sentences both ways in %.0f s; report: %s", len(sentences), seconds, files["report.html"])
    return EvaluationRun(results=results, files=files, failures=failures, seconds=seconds)


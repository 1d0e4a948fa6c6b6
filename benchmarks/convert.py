"""Speed of conversion on one CPU core: real-time factor with harvest and dio, where the time goes,
and model load time, and the batch throughput of ``convert`` with worker processes.

    python benchmarks/convert.py [--root ../shared/data/vcc2016] [--model RUN_OR_MODEL] [--repeats 3]
                                 [--long-seconds 60] [--chunk-seconds 30] [--threads 1]
                                 [--batch-files 16] [--long-file-seconds 120] [--jobs N]

Real-time factor (RTF) = wall seconds / seconds of audio (lower is faster), for
``VoiceConverter.convert`` on a loaded model, split into analysis (F0, CheapTrick envelope coded
to MCEPs, D4C aperiodicity), network (F0 transform, normalisation, generator) and synthesis
(envelope decoding, WORLD synthesis); "other" is the rest (chunk joining, copies). "cpu" is the
process CPU time of the whole conversion, which other processes on a shared machine inflate less
than wall time. Inputs: a ~4 s utterance (SF1/100013) and a long one (SF1 training utterances
concatenated to ``--long-seconds``; converted in chunks of ``--chunk-seconds``) from the VCC 2016
folder ``--root``. Each figure is the best of ``--repeats`` runs (the long input: one run).

Without ``--model``, models of the ``small`` and ``paper`` preset sizes with RANDOM weights are
exported to a temporary folder: the speed of WORLD and of the network does not depend on the
weights, so the timings hold for trained models of those sizes (the output is noise, of course).
Speaker statistics are computed from three SF1 / TM3 utterances.

Each F0 estimator runs with the full search range (the model's f0_floor-f0_ceil, the default) and
with ``f0_range="speaker"`` (the source speaker's exp(mean -/+ 3 std) of log-F0 from its statistics;
``cyclegan-vc convert --f0-range speaker``). The issue's targets (one core, 4 s utterance, model
loaded): RTF <= 0.15 with harvest, <= 0.05 with dio; model load < 2 s.

Last, a batch of ``--batch-files`` SF1 training files, and one file of ``--long-file-seconds`` (converted
in 30 s chunks, which the workers share), are converted by ``convert()`` (the model's F0 estimator,
harvest for the random models) in this process and with ``--jobs`` worker processes (``cyclegan-vc
convert --jobs N``), side by side: the batch's real-time factor and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import numpy as np  # noqa: E402
import pyworld  # noqa: E402
import torch  # noqa: E402

from cyclegan_vc.audio import load_audio, save_audio  # noqa: E402
from cyclegan_vc.checkpoint import export_model  # noqa: E402
from cyclegan_vc.config import load_config  # noqa: E402
from cyclegan_vc.conversion import VoiceConverter  # noqa: E402
from cyclegan_vc.features import FeatureConfig, analyze, decode_envelope, encode_envelope  # noqa: E402
from cyclegan_vc.models import build_generator, count_parameters  # noqa: E402
from cyclegan_vc.stats import compute_stats, f0_search_range  # noqa: E402

from _common import DEFAULT_VCC, hardware  # noqa: E402

STAGES = ("analysis", "network", "synthesis")


def best_of(repeats: int, func) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def export_random_model(path: Path, preset: str, stats: dict, features: FeatureConfig) -> Path:
    """A conversion model of the preset's size with random (seeded) weights."""
    config = load_config(preset)
    torch.manual_seed(0)
    generators = {
        role: build_generator(config.model.generator, **config.model.generator_kwargs) for role in ("G_ab", "G_ba")
    }
    return export_model(
        path,
        generators,
        generator=config.model.generator,
        generator_kwargs=dict(generators["G_ab"].config),
        stats=stats,
        features=features,
        speakers={"A": "SF1", "B": "TM3"},
        step=0,
        config=config.to_dict(),
    )


def time_conversion(vc: VoiceConverter, wave: np.ndarray, method: str, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` wall seconds of ``vc.convert``, the stage split of that run (wall) and
    the process CPU seconds of that run (``cpu``; less inflated by other processes than wall time)."""
    best: dict[str, float] = {"total": float("inf")}
    for _ in range(repeats):
        vc.reset_timings()
        start, cpu = time.perf_counter(), time.process_time()
        vc.convert(wave, vc.sample_rate, "A2B", f0_method=method)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        if total < best["total"]:
            best = {"total": total, "cpu": cpu, **vc.timings}
    best["other"] = best["total"] - sum(best[s] for s in STAGES)
    return best


def speaker_range(vc: VoiceConverter) -> tuple[float, float]:
    """The A speaker's F0 search range under ``f0_range="speaker"``."""
    return f0_search_range(vc.stats["A"], vc.features.f0_floor, vc.features.f0_ceil)


def world_breakdown(
    wave: np.ndarray, features: FeatureConfig, repeats: int, lo_hi: tuple[float, float] | None = None
) -> list[tuple[str, float]]:
    """Best-of seconds of each WORLD call of analysis and synthesis (the same calls and arguments
    as :func:`cyclegan_vc.features.analyze` / ``synthesize``); ``lo_hi``: also harvest in that range."""
    fs, x = features.sample_rate, np.ascontiguousarray(wave)
    kw = dict(f0_floor=features.f0_floor, f0_ceil=features.f0_ceil, frame_period=features.frame_period)
    rows = []
    t, (f0_h, times) = best_of(repeats, lambda: pyworld.harvest(x, fs, **kw))
    rows.append(("harvest", t))
    if lo_hi is not None:
        narrow = dict(kw, f0_floor=lo_hi[0], f0_ceil=lo_hi[1])
        rows.append(("harvest, speaker range", best_of(repeats, lambda: pyworld.harvest(x, fs, **narrow))[0]))
    t, (f0_d, times_d) = best_of(repeats, lambda: pyworld.dio(x, fs, **kw))
    rows.append(("dio", t))
    t, _ = best_of(repeats, lambda: pyworld.stonemask(x, f0_d, times_d, fs))
    rows.append(("stonemask (after dio)", t))
    fft = features.fft_size
    t, sp = best_of(repeats, lambda: pyworld.cheaptrick(x, f0_h, times, fs, f0_floor=features.f0_floor, fft_size=fft))
    rows.append(("cheaptrick (envelope)", t))
    t, ap = best_of(repeats, lambda: pyworld.d4c(x, f0_h, times, fs, fft_size=fft))
    rows.append(("d4c (aperiodicity)", t))
    t, mcep = best_of(repeats, lambda: encode_envelope(sp, features))
    rows.append(("code_spectral_envelope", t))
    t, sp2 = best_of(repeats, lambda: decode_envelope(mcep, features))
    rows.append(("decode_spectral_envelope", t))
    t, _ = best_of(repeats, lambda: pyworld.synthesize(f0_h, sp2, ap, fs, features.frame_period))
    rows.append(("synthesize", t))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_VCC, help="VCC 2016 folder (holds vcc2016_training/)")
    parser.add_argument("--model", type=Path, default=None, help="run directory or model file (default: random small/paper)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--chunk-seconds", type=float, default=30.0, help="chunk length of long inputs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the issue measures one core)")
    parser.add_argument("--batch-files", type=int, default=16, help="files of the batch conversion (0: skip it)")
    parser.add_argument("--long-file-seconds", type=float, default=120.0,
                        help="one file of this length (SF1's training files in a row), converted alone (0: skip it)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes of the batch conversion")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    train = args.root / "vcc2016_training"
    if not (train / "SF1").is_dir():
        raise SystemExit(f"VCC 2016 not found under {args.root} (give --root)")
    print(f"hardware: {hardware()}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (other processes slow every figure)")
    features = FeatureConfig()
    short, _ = load_audio(train / "SF1" / "100013.flac", features.sample_rate)
    files = sorted((train / "SF1").glob("*.flac"))
    pieces, total = [], 0
    for f in files:
        pieces.append(load_audio(f, features.sample_rate)[0])
        total += len(pieces[-1])
        if total >= args.long_seconds * features.sample_rate:
            break
    long = np.concatenate(pieces)[: int(args.long_seconds * features.sample_rate)]
    inputs = {f"{len(short) / features.sample_rate:.1f} s": (short, args.repeats), f"{len(long) / features.sample_rate:.0f} s": (long, 1)}

    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {}
        if args.model is not None:
            models["given"] = args.model
        else:
            stats = {}
            for role, speaker in (("A", "SF1"), ("B", "TM3")):
                feats = [analyze(load_audio(train / speaker / f"10000{i}.flac")[0], features) for i in (1, 2, 3)]
                stats[role] = compute_stats((f.f0, f.mcep) for f in feats)
            for preset in ("small", "paper"):
                models[preset] = export_random_model(Path(tmp) / f"{preset}.safetensors", preset, stats, features)

        print("\nmodel load (VoiceConverter.load on the CPU; best of repeats, first load in brackets)")
        converters = {}
        for name, path in models.items():
            start = time.perf_counter()
            VoiceConverter.load(path, device="cpu")
            first = time.perf_counter() - start
            seconds, converters[name] = best_of(
                args.repeats, lambda: VoiceConverter.load(path, device="cpu", chunk_seconds=args.chunk_seconds)
            )
            params = count_parameters(converters[name].generators["G_ab"])
            size = (path / "model_best.safetensors" if path.is_dir() else path).stat().st_size if args.model is None else 0
            extra = f", file {size / 1e6:.0f} MB" if size else ""
            print(f"  {name:<6} {seconds:6.2f} s  [{first:.2f} s]  ({params / 1e6:.1f} M parameters per generator{extra})")

        name = "given" if args.model is not None else "small"
        vc = converters[name]
        note = "" if args.model is not None else " (random weights: timing only)"
        print(f"\nconversion with the {name} model{note}, {args.threads} torch thread(s), real-time factor")
        print(f"  SF1's F0 search range with f0_range=speaker: {'-'.join(f'{v:.0f}' for v in speaker_range(vc))} Hz "
              f"(full: {features.f0_floor:.0f}-{features.f0_ceil:.0f})")
        print(f"  {'f0':<8}{'range':<9}{'input':>7}{'total':>8}{'analysis':>10}{'network':>9}{'synthesis':>11}{'other':>7}{'cpu':>7}")
        vc.convert(short[: features.sample_rate], features.sample_rate)  # warm-up (first-call allocations)
        results = {}
        for method in ("harvest", "dio"):
            for f0_range in ("full", "speaker"):
                vc.options = vc.options.replace(f0_range=f0_range)
                for label, (wave, repeats) in inputs.items():
                    seconds = len(wave) / features.sample_rate
                    t = results[method, f0_range, label] = {
                        k: v / seconds for k, v in time_conversion(vc, wave, method, repeats).items()
                    }
                    print(
                        f"  {method:<8}{f0_range:<9}{label:>7}{t['total']:8.3f}{t['analysis']:10.3f}"
                        f"{t['network']:9.3f}{t['synthesis']:11.3f}{t['other']:7.3f}{t['cpu']:7.3f}"
                    )
        vc.options = vc.options.replace(f0_range="full")
        short_label = next(iter(inputs))
        for method, goal in (("harvest", 0.15), ("dio", 0.05)):
            for f0_range in ("full", "speaker"):
                t = results[method, f0_range, short_label]
                verdict = "met" if t["total"] <= goal else "NOT met"
                print(f"  target {method} <= {goal} on the {short_label} utterance, {f0_range} range: "
                      f"{t['total']:.3f} wall, {t['cpu']:.3f} CPU: {verdict}")
        if "paper" in converters:
            seconds = len(short) / features.sample_rate
            print("  network alone, 4 s utterance: " + ", ".join(
                f"{n} {time_conversion_network(converters[n], short, args.repeats) / seconds:.3f}" for n in converters
            ))

        seconds = len(short) / features.sample_rate
        print(f"\nWORLD calls on the {seconds:.1f} s utterance (pyworld, one core), real-time factor")
        for label, t in world_breakdown(short, features, args.repeats, speaker_range(vc)):
            print(f"  {label:<26}{t / seconds:7.3f}")

        if args.batch_files or args.long_file_seconds:
            inputs = {}
            if args.batch_files:
                inputs[f"{args.batch_files} SF1 files"] = files[: args.batch_files]
            if args.long_file_seconds:
                one = np.concatenate([load_audio(f, features.sample_rate)[0] for f in files])
                one = np.tile(one, int(np.ceil(args.long_file_seconds * features.sample_rate / len(one))))
                path = save_audio(Path(tmp) / "long.wav", one[: int(args.long_file_seconds * features.sample_rate)],
                                  features.sample_rate)
                inputs[f"one {args.long_file_seconds:.0f} s file"] = [path]
            batch(models[name], inputs, Path(tmp), args.jobs)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def batch(model: Path, inputs: dict[str, list[Path]], tmp: Path, jobs: int) -> None:
    """``convert`` of each batch of files (the model's F0 estimator) in this process and with ``jobs``
    worker processes, side by side: wall time, real-time factor of the batch and the speed-up."""
    from cyclegan_vc.conversion import convert

    print(f"\nbatch conversion (convert(), the model's F0 estimator, 30 s chunks), this process against {jobs} "
          "worker processes (one torch thread each; wall time includes the workers' start and model load)")
    print(f"  {'input':<28}{'jobs':>5}{'audio s':>9}{'wall s':>8}{'RTF':>7}{'x-real-time':>13}{'speed-up':>10}")
    for label, files in inputs.items():
        walls = {}
        for n in (1, jobs):
            start = time.perf_counter()
            report = convert(model, files, tmp / f"batch-{len(files)}-{n}", device="cpu", jobs=n, progress=False)
            walls[n] = time.perf_counter() - start
            if report.failures:
                raise SystemExit(f"batch conversion failed: {report.failures}")
            speed_up = f"{walls[1] / walls[n]:.2f}x" if n != 1 else ""
            print(f"  {label:<28}{n:>5}{report.audio_seconds:9.1f}{walls[n]:8.1f}{walls[n] / report.audio_seconds:7.3f}"
                  f"{report.audio_seconds / walls[n]:13.1f}{speed_up:>10}")


def time_conversion_network(vc: VoiceConverter, wave: np.ndarray, repeats: int) -> float:
    """Best-of seconds of the network stage alone (MCEPs of ``wave`` -> converted MCEPs)."""
    feats = analyze(wave, vc.features.replace(f0_method="dio"))
    vc.convert_mcep(feats.mcep, "A2B")  # warm-up
    return best_of(repeats, lambda: vc.convert_mcep(feats.mcep, "A2B"))[0]


if __name__ == "__main__":
    main()

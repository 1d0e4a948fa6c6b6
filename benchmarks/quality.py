"""Quality on VCC 2016: the paper's protocol on its four speaker pairs, one table.

    python benchmarks/quality.py [--root ../shared/data/vcc2016] [--out runs/quality]
                                 [--pairs SF1-TF2 SF1-TM3 SM1-TF2 SM1-TM3] [--preset small]
                                 [--minutes 20 | --iterations N] [--seed 0] [--set key=value ...]
                                 [--energy generator|source] [--smooth PASSES] [--eval-only]
    python benchmarks/quality.py --compare runs/q-small runs/q-vc2 runs/q-mask [--pairs ...] [--energy ...] [--smooth N]

For each pair, `cyclegan-vc recipe vcc2016` (first 81 source / last 81 target training sentences,
training under the budget, the 54 evaluation sentences converted both ways and scored beside the
baselines). A pair already trained under --out is not trained again (delete it to rerun); its
evaluation with the given conversion options (--energy, --smooth) is reused, or made once into
RUN/evaluation-<energy>[-smooth<N>]/. The table: per pair and direction, MCD [dB], F0 RMSE [cents], speaker similarity to the
target and to the source, DNSMOS overall, for the system and each baseline, and whether the system
meets the bar (MCD <= mean-variance; sim to target >= 0.75 and >= sim to source + 0.10; DNSMOS >= 2.7).

With --compare, nothing is trained or evaluated: the evaluations already made under each folder given
(one --out each, e.g. one per preset) are printed side by side per direction, with the mean-variance
baseline, and for each folder after the first the directions where it beats the first on both MCD
and DNSMOS.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from cyclegan_vc.evaluation import evaluate  # noqa: E402
from cyclegan_vc.options import ENERGY_MODES, ConversionOptions  # noqa: E402
from cyclegan_vc.recipe import recipe  # noqa: E402

from _common import DEFAULT_VCC, hardware  # noqa: E402

PAIRS = ("SF1-TF2", "SF1-TM3", "SM1-TF2", "SM1-TM3")
SYSTEMS = ("cyclegan", "mean_variance", "no_conversion", "world_resynthesis")
KEYS = ("mcd_db", "f0_rmse_cents", "sim_to_target", "sim_to_source", "dnsmos_ovrl")


def bar(means: dict[str, dict[str, float]]) -> list[str]:
    """The bar's cells the system misses (empty: all met)."""
    s, mv = means["cyclegan"], means["mean_variance"]
    missed = []
    if not s["mcd_db"] <= mv["mcd_db"]:
        missed.append("MCD")
    if not s["sim_to_target"] >= 0.75:
        missed.append("sim<0.75")
    if not s["sim_to_target"] >= s["sim_to_source"] + 0.10:
        missed.append("margin<0.10")
    if not s["dnsmos_ovrl"] >= 2.7:
        missed.append("DNSMOS")
    return missed


def matches(evaluation: Path, energy: str, smooth: int) -> bool:
    """Whether ``evaluation`` holds metrics of a conversion with these options."""
    path = evaluation / "metrics.json"
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())["meta"]
    return meta.get("energy", "generator") == energy and meta.get("smooth", 0) == smooth


def read_rows(metrics: Path, run: Path) -> list[tuple[str, object, dict[str, dict[str, float]]]]:
    """``(direction, iterations, {system: {key: mean}})`` per direction of one evaluation."""
    data = json.loads(metrics.read_text())
    step = data["meta"].get("model_step")  # the evaluated model's; evaluations before it: the last validation's
    if step is None:
        step = json.loads((run / "validation.json").read_text())[-1]["step"] if (run / "validation.json").is_file() else "?"
    rows = []
    for block in data["directions"].values():
        means = {s: {k: (v["summary"][k]["mean"] if v["summary"][k]["mean"] is not None else float("nan"))
                     for k in KEYS} for s, v in block["systems"].items()}
        rows.append((f"{block['source']}->{block['target']}", step, means))
    return rows


def evaluation_name(energy: str, smooth: int) -> str:
    """The folder of an --eval-only evaluation with these conversion options."""
    return f"evaluation-{energy}" + (f"-smooth{smooth}" if smooth else "")


def cells(m: dict[str, float]) -> str:
    """One system's metric cells of a table row."""
    return (f"{m['mcd_db']:7.2f} {m['f0_rmse_cents']:9.1f} {m['sim_to_target']:8.3f} {m['sim_to_source']:8.3f} "
            f"{m['dnsmos_ovrl']:7.2f}")


def verdict(means: dict[str, dict[str, float]]) -> str:
    """The bar's verdict on the system: ``met`` or the cells it misses."""
    missed = bar(means)
    return "met" if not missed else "missed: " + ", ".join(missed)


def found_evaluation(run: Path, energy: str, smooth: int) -> Path | None:
    """The metrics of ``run``'s evaluation with these conversion options: the recipe's own or an --eval-only one."""
    name = evaluation_name(energy, smooth)
    found = [d / "metrics.json" for d in (run / "evaluation", run / name) if matches(d, energy, smooth)]
    return found[0] if found else None


def compare(outs: list[Path], pairs: list[str], energy: str, smooth: int) -> None:
    """Print the evaluations under several --out folders side by side (see the module's docstring)."""
    table: dict[str, dict[str, tuple]] = {}  # direction -> label -> (iterations, means)
    for out in outs:
        for pair in pairs:
            metrics = found_evaluation(out / pair, energy, smooth)
            if metrics is None:
                print(f"{out / pair}: no evaluation with energy {energy}, smooth {smooth}; left out")
                continue
            for direction, step, means in read_rows(metrics, out / pair):
                table.setdefault(direction, {})[out.name] = (step, means)
    header = f"{'direction':<10} {'run':<14} {'iters':>6} {'MCD dB':>7} {'F0 cents':>9} {'sim tgt':>8} {'sim src':>8} {'DNSMOS':>7}  bar"
    print(f"energy {energy}, smooth {smooth}")
    print(header)
    print("-" * len(header))
    wins = {out.name: [] for out in outs[1:]}
    for direction, runs in table.items():
        for label, (step, means) in runs.items():
            print(f"{direction:<10} {label:<14} {step!s:>6} {cells(means['cyclegan'])}  {verdict(means)}")
        baseline = next(iter(runs.values()))[1]["mean_variance"]  # the same in every run of the pair
        print(f"{direction:<10} {'mean_variance':<14} {'':>6} {cells(baseline)}")
        print()
        first = runs.get(outs[0].name)
        for label in wins:
            if first is not None and label in runs:
                a, b = first[1]["cyclegan"], runs[label][1]["cyclegan"]
                if b["mcd_db"] < a["mcd_db"] and b["dnsmos_ovrl"] > a["dnsmos_ovrl"]:
                    wins[label].append(direction)
    for label, directions in wins.items():
        both = sum(outs[0].name in runs and label in runs for runs in table.values())
        print(f"{label} beats {outs[0].name} on MCD and DNSMOS in {len(directions)} of {both} directions: "
              f"{', '.join(directions) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_VCC)
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--energy", choices=ENERGY_MODES, default="generator",
                        help="the converted speech's c0: the generator's (the paper) or the source's, mean-variance mapped")
    parser.add_argument("--smooth", type=int, default=0,
                        help="passes of the [1, 2, 1]/4 filter along time over the generator's output (0: the paper)")
    parser.add_argument("--mcep-dim", type=int, default=None,
                        help="mel-cepstrum dimension of the features and the model's input (default 24, the paper's)")
    parser.add_argument("--eval-only", action="store_true",
                        help="never train: evaluate the runs already under --out with these conversion options, "
                        "into RUN/evaluation-<energy>[-smooth<N>]/ (unless such an evaluation exists)")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="OUT",
                        help="print the evaluations already under these --out folders side by side; train nothing")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.pairs, args.energy, args.smooth)
        return

    print(hardware())
    budget = f"{args.iterations} iterations" if args.iterations else f"{args.minutes:g} minutes"
    print(f"preset {args.preset}, budget {budget} per pair, seed {args.seed}, overrides {args.set or 'none'}, "
          f"energy {args.energy}, smooth {args.smooth}" + (f", mcep_dim {args.mcep_dim}" if args.mcep_dim else ""))
    options = ConversionOptions(energy=args.energy, smooth=args.smooth)
    rows = []
    for pair in args.pairs:
        source, target = pair.split("-")
        run = args.out / pair
        name = evaluation_name(args.energy, args.smooth)
        found = found_evaluation(run, args.energy, args.smooth)
        if found:
            metrics = found
        elif args.eval_only or (run / "evaluation" / "metrics.json").is_file():
            if not args.eval_only:
                print(f"{pair}: trained and evaluated with other conversion options; evaluating again into {run / name}")
            source_dir, target_dir = (args.root / "evaluation_all" / speaker for speaker in (source, target))
            start = time.perf_counter()
            evaluate(run, source_dir, target_dir, run / name, options=options, progress=False)
            print(f"{pair}: evaluated in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
            metrics = run / name / "metrics.json"
        elif (run / "checkpoints").is_dir():
            sys.exit(f"quality.py: {run} holds a training run that did not finish (interrupted?): delete it to train {pair} again")
        else:
            start = time.perf_counter()
            recipe(
                args.root, source, target, run, preset=args.preset,
                minutes=None if args.iterations else args.minutes, iterations=args.iterations,
                overrides=args.set, seed=args.seed, cache_dir=args.out / "cache", device="auto",
                options=options, mcep_dim=args.mcep_dim, progress=False,
            )
            print(f"{pair}: done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
            metrics = run / "evaluation" / "metrics.json"
        rows += read_rows(metrics, run)

    header = f"{'direction':<10} {'iters':>6} {'system':<18} {'MCD dB':>7} {'F0 cents':>9} {'sim tgt':>8} {'sim src':>8} {'DNSMOS':>7}  bar"
    print()
    print(header)
    print("-" * len(header))
    for name, step, means in rows:
        for system in SYSTEMS:
            print(f"{name:<10} {step!s:>6} {system:<18} {cells(means[system])}  {verdict(means) if system == 'cyclegan' else ''}")
        print()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM during training (its state is saved): 128 + the signal
        # a resumed pair would train longer than the budget: the pair interrupted is trained again from scratch
        print(f"quality.py: {exc or 'interrupted'}; delete that pair's folder before running again", file=sys.stderr)
        sys.exit(128 + int(getattr(exc, "signum", signal.SIGINT)))

"""bf16 autocast's effect on training: the same run in fp32 and in bf16, beside fp32 on other crops.

    python benchmarks/studies/bf16_losses.py --prepared DIR [--preset small] [--iterations 1000] [--window 200]
                                     [--device cpu|cuda] [--eval-pairs 6]

``DIR`` is a ``cyclegan-vc prepare`` output (``make demo`` leaves one in ``demo-output/prepared``).
Three trainers start from the same initial weights:

- ``fp32``: the preset as it is;
- ``bf16``: ``training.amp=true``, fed the same crops in the same order;
- ``fp32, other crops``: fp32 again with the crop sampler seeded differently: how far two fp32 runs
  that differ in nothing that matters drift apart, the yardstick for bf16's difference (GAN training
  amplifies any difference, so per-iteration losses of two runs soon differ for every cause).

For each: every loss's mean over the last ``--window`` iterations, and the held-out validation of
``Trainer.validate`` at the end (MCD in dB of both directions, the training's model-selection score;
the first ``--eval-pairs`` parallel eval pairs). On a CPU without native bf16 the bf16 run is
emulated and far slower (here 30x for ``paper``, 9.5x for ``small``); on a GPU run it at the paper's
scale: ``--preset paper --iterations 20000 --device cuda``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import numpy as np  # noqa: E402

from cyclegan_vc.config import load_config  # noqa: E402
from cyclegan_vc.training import CropSampler, Trainer, TrainingData  # noqa: E402

from _common import hardware  # noqa: E402


def run(trainer: Trainer, iterations: int, window: int) -> tuple[dict[str, float], dict[str, float], float]:
    """Train ``iterations`` iterations; the losses' means over the last ``window``, the validation
    at the end and the seconds per iteration."""
    history: dict[str, list[float]] = {}
    start = time.perf_counter()
    for _ in range(iterations):
        for key, value in trainer.train_step().items():
            history.setdefault(key, []).append(float(value))
    seconds = (time.perf_counter() - start) / iterations
    means = {key: float(np.mean(values[-window:])) for key, values in history.items()}
    return means, trainer.validate(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="a `cyclegan-vc prepare` output folder")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--window", type=int, default=200, help="iterations at the end whose losses are averaged")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-pairs", type=int, default=6)
    args = parser.parse_args()

    print(f"hardware: {hardware()}")
    data = TrainingData.from_prepared(args.prepared, eval_pairs=args.eval_pairs)
    overrides = [f"training.iterations={args.iterations}"]
    runs = {
        "fp32": Trainer(load_config(args.preset, overrides), data, device=args.device),
        "bf16": Trainer(load_config(args.preset, [*overrides, "training.amp=true"]), data, device=args.device),
        "fp32, other crops": Trainer(load_config(args.preset, overrides), data, device=args.device),
    }
    first = runs["fp32"]
    for trainer in runs.values():
        if trainer is not first:
            trainer.copy_state_from(first)  # the same initial weights (and Adam's empty state)
    t = first.config.training
    other = runs["fp32, other crops"]
    other.sampler = CropSampler(data.mceps, t.crop_frames, t.batch_size, t.seed + 1, t.short_utterances, data.ids)
    print(f"{args.preset}, batch {t.batch_size}, {args.iterations} iterations (identity loss for the first "
          f"{min(t.identity_steps, args.iterations)}), losses averaged over the last {args.window}; "
          f"{len(data.eval_pairs)} eval pairs, {args.prepared}", flush=True)

    results = {}
    for name, trainer in runs.items():
        results[name] = run(trainer, args.iterations, args.window)
        means, metrics, seconds = results[name]
        print(f"  {name:<18} done: {seconds:.3f} s/it, validation score {metrics['score']:.3f} dB", flush=True)

    keys = list(results["fp32"][0])
    print(f"\n{'':<20}" + "".join(f"{key:>16}" for key in keys) + f"{'MCD A2B':>10}{'MCD B2A':>10}")
    for name, (means, metrics, _) in results.items():
        print(f"{name:<20}" + "".join(f"{means[key]:>16.4f}" for key in keys)
              + f"{metrics['mcd_A2B']:>10.3f}{metrics['mcd_B2A']:>10.3f}")
    for name in ("bf16", "fp32, other crops"):
        diffs = ", ".join(
            f"{key} {results[name][0][key] / results['fp32'][0][key] - 1:+.1%}" for key in keys if results["fp32"][0][key]
        )
        print(f"  {name} against fp32, relative: {diffs}")


if __name__ == "__main__":
    main()

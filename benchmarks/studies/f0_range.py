"""Harvest in the speaker's own F0 range against the full range: speed and agreement of the contours.

    python benchmarks/studies/f0_range.py [--root ../shared/data/vcc2016] [--speakers SF1 SM1 TF2 TM3]
                                  [--widths 3 4] [--train-utterances 30] [--jobs 2]

Per speaker: log-F0 statistics from harvest (full range, 71-800 Hz) on its first ``--train-utterances``
training utterances; then every evaluation recording analysed by harvest in the full range and in
:func:`cyclegan_vc.stats.f0_search_range` of those statistics (exp(mean -/+ k std), k in ``--widths``;
``convert --f0-range speaker`` uses k = 3). Printed: the process CPU seconds of harvest per second of
audio in each range (one process per recording, ``--jobs`` at a time) and their ratio; frames voiced
in one contour and not the other; frames voiced in both that differ by more than 50 cents; the median
difference (cents); the share of the full range's voiced frames outside the speaker range.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import numpy as np  # noqa: E402

from cyclegan_vc.audio import load_audio  # noqa: E402
from cyclegan_vc.features import FeatureConfig, estimate_f0  # noqa: E402
from cyclegan_vc.stats import SpeakerStats, f0_search_range  # noqa: E402

from _common import DEFAULT_VCC, hardware  # noqa: E402

CONFIG = FeatureConfig()  # harvest, 71-800 Hz, 5 ms


def full_f0(path: str) -> np.ndarray:
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    return estimate_f0(load_audio(path, CONFIG.sample_rate)[0], CONFIG)[0]


def both(args: tuple[str, tuple[float, float]]) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    path, f0_range = args
    wave = load_audio(path, CONFIG.sample_rate)[0]
    start = time.process_time()
    full = estimate_f0(wave, CONFIG)[0]
    middle = time.process_time()
    narrow = estimate_f0(wave, CONFIG, f0_range)[0]
    end = time.process_time()
    return len(wave) / CONFIG.sample_rate, middle - start, end - middle, full, narrow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_VCC)
    parser.add_argument("--speakers", nargs="+", default=["SF1", "SM1", "TF2", "TM3"])
    parser.add_argument("--widths", nargs="+", type=float, default=[3.0, 4.0])
    parser.add_argument("--train-utterances", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if not (args.root / "vcc2016_training").is_dir():
        raise SystemExit(f"VCC 2016 not found under {args.root} (give --root)")
    print(f"hardware: {hardware()}")
    print(f"{'speaker':<8}{'k':>3}{'range Hz':>11}{'full RTF':>10}{'range RTF':>11}{'speed-up':>10}"
          f"{'V/UV differ':>13}{'> 50 cents':>12}{'median c':>10}{'outside':>9}", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        for speaker in args.speakers:
            train = sorted((args.root / "vcc2016_training" / speaker).glob("*.*"))[: args.train_utterances]
            f0 = np.concatenate(list(pool.map(full_f0, map(str, train))))
            lf0 = np.log(f0[f0 > 0])
            stats = SpeakerStats(np.zeros(1), np.ones(1), float(lf0.mean()), float(lf0.std()), f0.size, lf0.size)
            evaluation = sorted((args.root / "evaluation_all" / speaker).glob("*.*"))
            for width in args.widths:
                lo, hi = f0_search_range(stats, CONFIG.f0_floor, CONFIG.f0_ceil, width)
                rows = list(pool.map(both, [(str(p), (lo, hi)) for p in evaluation]))
                seconds = sum(r[0] for r in rows)
                t_full, t_narrow = sum(r[1] for r in rows), sum(r[2] for r in rows)
                full, narrow = np.concatenate([r[3] for r in rows]), np.concatenate([r[4] for r in rows])
                vf, vn = full > 0, narrow > 0
                common = vf & vn
                cents = 1200 * np.abs(np.log2(full[common] / narrow[common]))
                outside = np.mean((full[vf] < lo) | (full[vf] > hi))
                print(f"{speaker:<8}{width:>3.0f}{f'{lo:.0f}-{hi:.0f}':>11}{t_full / seconds:>10.4f}{t_narrow / seconds:>11.4f}"
                      f"{t_full / t_narrow:>9.2f}x{100 * np.mean(vf != vn):>12.2f}%{100 * np.mean(cents > 50):>11.2f}%"
                      f"{np.median(cents):>10.2f}{100 * outside:>8.2f}%", flush=True)


if __name__ == "__main__":
    main()

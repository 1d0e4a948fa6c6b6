"""Data-parallel scaling: training iterations per second with 1 and N torchrun processes, side by side.

    python benchmarks/train_ddp.py [--data PREPARED] [--preset small] [--nproc 1 2] [--iterations 60]
                                   [--batch 1] [--device cpu]

For each process count the same command runs in turn, ``torchrun --standalone --nproc-per-node N -m
cyclegan_vc train`` on the same prepared data (made once from four VCC 2016 files per speaker of
``--root`` when ``--data`` is not given), ``--batch`` crops per process (so N processes update on N
times as many crops per iteration), no validation and no checkpoint until the end. The time of the
iterations is read from the run's TensorBoard wall times (first to last logged step), so process
start-up, data loading and saving are left out. Printed: iterations/s, crops/s, and the ratio of each
to one process. On a CPU, each process gets ``OMP_NUM_THREADS`` = cores / N (torchrun's default of 1
with N > 1 otherwise); on GPUs (``--device cuda``) each process takes GPU ``LOCAL_RANK``:

    python benchmarks/train_ddp.py --device cuda --preset paper --nproc 1 2 4 8 --batch 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _prepared(root: Path, scratch: Path) -> Path:
    from cyclegan_vc.prepare import prepare

    corpus = scratch / "corpus"
    for spk in ("SF1", "TM3"):
        (corpus / spk).mkdir(parents=True)
        for n in range(100001, 100009):
            shutil.copy(root / "vcc2016_training" / spk / f"{n}.flac", corpus / spk / f"{n}.flac")
    out = scratch / "prepared"
    prepare(corpus / "SF1", corpus / "TM3", out, f0="dio", progress=False)
    return out


def _iterations_per_second(run: Path) -> tuple[float, int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("loss/generator")
    first, last = scalars[0], scalars[-1]
    return (last.step - first.step) / (last.wall_time - first.wall_time), last.step - first.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "vcc2016")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{platform.processor() or platform.machine()}, {cores} cores, preset {args.preset}, batch {args.batch} "
          f"per process, {args.iterations} iterations, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        data = args.data or _prepared(args.root, scratch)
        rows = []
        for nproc in args.nproc:
            run = scratch / f"run{nproc}"
            env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
            if args.device == "cpu":
                env["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "cyclegan_vc", "train", "--data", str(data), "--run-dir", str(run), "--preset", args.preset,
                "--iterations", str(args.iterations), "--device", args.device,
                "--set", f"training.batch_size={args.batch}", "--set", "training.log_interval=1",
                "--set", "training.validation_interval=0", "--set", "training.checkpoint_interval=0",
                "--set", "training.milestone_interval=0",
            ]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{nproc} process(es) failed:\n{done.stderr[-3000:]}")
            rate, counted = _iterations_per_second(run)
            rows.append((nproc, rate, counted))
        base = rows[0][1]
        print(f"{'processes':>9} {'threads':>7} {'it/s':>7} {'crops/s':>8} {'it/s ratio':>10} {'crops/s ratio':>13}")
        for nproc, rate, _ in rows:
            threads = max(1, cores // nproc) if args.device == "cpu" else "-"
            print(f"{nproc:>9} {threads:>7} {rate:>7.2f} {rate * nproc * args.batch:>8.2f} {rate / base:>10.2f} "
                  f"{rate * nproc / (base * rows[0][0]):>13.2f}")


if __name__ == "__main__":
    main()

"""Speed of one CycleGAN-VC training iteration: Trainer.train_step against the plain reference.

    python benchmarks/train_step.py [--presets paper small] [--batch 1 4] [--iterations 3] [--repeats 3]
                                    [--threads N] [--phases identity no-identity] [--breakdown] [--profile]
                                    [--passive-omp]

For each preset, batch size and phase (``identity``: with the identity-mapping loss, as in the first
10^4 iterations; ``no-identity``: without it, as in the rest of training), side by side in one run:

- ``plain``: :func:`cyclegan_vc.training.reference_train_step`, the straightforward iteration, with
  ``torch.nn`` convolutions (oneDNN / native kernels) and Adam's default for-loop implementation: the
  implementation before optimisation;
- ``fast``: :meth:`cyclegan_vc.training.Trainer.train_step`;
- with ``--breakdown`` also ``reference``: the reference iteration with the GEMM convolutions and
  fused Adam (what the layer and optimiser changes give without restructuring the iteration).

Both trainers start from the same weights and see the same crops. Each repeat times ``--iterations``
iterations of every variant in turn (interleaved, so that load from other processes hits all alike)
after one warm-up iteration each; the reported time is the median over repeats of the mean per
iteration. The FLOPs of an iteration are counted by ``torch.utils.flop_counter.FlopCounterMode`` on
one real iteration of the ``plain`` variant (convolutions and matrix products: the work of the
algorithm as written) and every variant's GFLOP/s and fraction of the peak use that count, so that a
variant that skips work gets the credit in its time, not in its count. Each variant's own count is
printed too (``GFLOP run``: the fast step runs no third discriminator pass, which the reference runs,
and skips the input-gradient products of the real half of each discriminator batch in the generator
loss's backward pass, whose output gradient is exactly zero).
The fp32 matmul peak is the best throughput of a 2048x2048 ``torch.mm`` measured in every repeat with
the same threads; fraction of peak = FLOPs / time / peak. On a machine whose speed drifts during the
run (a shared virtual machine), the best peak of the whole run against the median step time
understates the fraction; ``% beside`` pairs each timing (``--iterations`` iterations of one variant)
with the median of the five products measured just before it, and reports the median of those
ratios over the repeats.

By default the OpenMP runtime keeps its own wait policy, as training runs do (they set nothing).
On a machine shared with other jobs, wall-clock times of several threads depend on how much CPU the
others leave. Two things make the numbers usable there:

- ``--passive-omp`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch is imported:
  with spinning OpenMP threads, a thread that waits for a descheduled partner burns whole scheduler time slices
  (measured on 2 shared cores: 1000 additions of 10^5 floats took 8 s with 2 spinning threads,
  39 ms with passive ones, 26 ms with 1 thread). On an otherwise idle machine it costs time instead:
  every parallel region waits for its threads to wake (measured: the `paper` fast step 0.767 s/it
  passive against 0.668 with the default policy, `small` 0.151 against 0.079);
- besides wall-clock time, the main thread's CPU time per iteration is reported (``cpu s/it``). With
  passive waiting, the main thread runs the serial work and its share of every parallel region, so its
  CPU time is what the wall-clock time would be on an idle machine with balanced threads. ``cpu % of
  peak`` compares it with the same estimate for the matmul (main-thread CPU time of the 2048^3
  ``torch.mm``), an estimate of the fraction of peak on an idle machine.

With ``--profile``, one more run of the fast step per preset (batch 1, identity phase) under
``torch.profiler``: the share of the operators' time spent in matrix products (``aten::mm``,
``addmm``, ``bmm``), the throughput of those products alone (the counted FLOPs over their time, against
the same matmul peak), the operators that take the most time, and the products that take the most
time by shape with their own throughput. It separates the two reasons a step
falls short of the peak: small matrix shapes (the products themselves run below the peak) and the
rest (element-wise and data-movement work between them).

The data pipeline share is the time of ``CropSampler.sample`` for both speakers (in-memory random
features: 160 utterances of 300-900 frames per speaker) over the time of the fast iteration.
"""

from __future__ import annotations

import os
import sys

if "--passive-omp" in sys.argv:  # before torch (and its OpenMP runtime) is loaded
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from cyclegan_vc.config import load_config  # noqa: E402
from cyclegan_vc.models import gemm_convolutions  # noqa: E402
from cyclegan_vc.training import CropSampler, Trainer, _use_fused_adam, reference_train_step  # noqa: E402

from _common import hardware  # noqa: E402

Step = Callable[[Trainer, torch.Tensor, torch.Tensor], object]


def plain_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> object:
    with gemm_convolutions(False):
        return reference_train_step(trainer, x, y)


def reference_fused_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> object:
    for optimizer in trainer.optimizers.values():
        _use_fused_adam(optimizer)
    return reference_train_step(trainer, x, y)


def fast_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> object:
    return trainer.train_step(x, y)


class Peak:
    """fp32 matmul throughput (GFLOP/s) of 2048x2048 ``torch.mm``, measured repeatedly: the best
    wall-clock figure and the best main-thread-CPU figure seen."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self.a, self.b = torch.randn(size, size), torch.randn(size, size)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def measure(self, repeats: int = 5) -> float:
        """Measure ``repeats`` products; returns their median wall-clock GFLOP/s (the peak of the moment)."""
        torch.mm(self.a, self.b)
        flops = 2 * self.size**3
        now = []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.thread_time()
            torch.mm(self.a, self.b)
            self.cpu.append(flops / (time.thread_time() - cpu) / 1e9)
            now.append(flops / (time.perf_counter() - wall) / 1e9)
        self.wall.extend(now)
        return statistics.median(now)


def random_features(utterances: int, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((dim, int(rng.integers(300, 901)))).astype(np.float32) for _ in range(utterances)]


def count_flops(step: Step, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        step(trainer, x, y)
    return counter.get_total_flops()


@functools.cache
def averaged_trainer(preset: str) -> Trainer:
    """A trainer of ``preset`` with the generator weight average on, to time its update where the preset
    has it off (built once per preset, not once per row: ``paper``'s has 60 M parameters)."""
    return Trainer(load_config(preset, ["training.generator_ema=0.999"]))


def bench(preset: str, batch: int, phase: str, args: argparse.Namespace, peak: Peak) -> dict:
    """Time the variants on one preset, batch size and phase; the result row for :func:`report`."""
    config = load_config(preset, [f"training.batch_size={batch}"])
    t = config.training
    dim = config.model.generator_kwargs.get("in_channels", 24)
    sampler = CropSampler(
        {"A": random_features(160, dim, 1), "B": random_features(160, dim, 2)}, t.crop_frames, batch, seed=0
    )
    variants: dict[str, Step] = {"plain": plain_step}
    if args.breakdown:
        variants["reference"] = reference_fused_step
    variants["fast"] = fast_step
    trainers = {name: Trainer(config) for name in variants}
    for trainer in trainers.values():
        trainer.step = 0 if phase == "identity" else t.identity_steps
    crops = [(sampler.sample("A"), sampler.sample("B")) for _ in range(args.iterations)]

    flops = {}
    for name, step in variants.items():
        step(trainers[name], *crops[0])  # warm-up (also allocates the persistent gradient buffers)
        flops[name] = count_flops(step, trainers[name], *crops[0])
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    beside: dict[str, list[float]] = {name: [] for name in variants}  # the peak just before each timing
    for _ in range(args.repeats):
        for name, step in variants.items():
            beside[name].append(peak.measure())
            start, start_cpu = time.perf_counter(), time.thread_time()
            for x, y in crops:
                step(trainers[name], x, y)
            cpu[name].append((time.thread_time() - start_cpu) / len(crops))
            wall[name].append((time.perf_counter() - start) / len(crops))

    calls = 200
    start = time.perf_counter()
    for _ in range(calls):
        sampler.sample("A")
        sampler.sample("B")
    data = (time.perf_counter() - start) / calls

    # the generator weight average (training.generator_ema; on in small, off in paper): its update alone
    averaged = trainers["fast"] if trainers["fast"].ema else averaged_trainer(preset)
    averaged._update_ema()
    start = time.perf_counter()
    for _ in range(20):
        averaged._update_ema()
    ema = (time.perf_counter() - start) / 20
    print(f"  measured {preset} batch {batch} {phase}: " + ", ".join(
        f"{name} {statistics.median(v):.3f} s/it" for name, v in wall.items()), file=sys.stderr, flush=True)
    return {"preset": preset, "batch": batch, "phase": phase, "flops": flops, "wall": wall, "cpu": cpu, "data": data,
            "beside": beside,
            "ema": ema, "ema_on": bool(t.generator_ema)}


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def profile(preset: str, args: argparse.Namespace, peak: Peak) -> None:
    """Where the fast step's time goes: matrix products against the rest (see the module docstring)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    config = load_config(preset, ["training.batch_size=1"])
    t = config.training
    dim = config.model.generator_kwargs.get("in_channels", 24)
    sampler = CropSampler({"A": random_features(40, dim, 1), "B": random_features(40, dim, 2)}, t.crop_frames, 1, seed=0)
    trainer = Trainer(config)
    crops = [(sampler.sample("A"), sampler.sample("B")) for _ in range(args.iterations)]
    fast_step(trainer, *crops[0])
    flops = count_flops(fast_step, trainer, *crops[0])
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for x, y in crops:
            fast_step(trainer, x, y)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    by_shape = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mm", "aten::addmm")]
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / len(crops)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6 / len(crops)
    rate = flops / gemm / 1e9
    print(f"profile {preset} batch 1 identity: operators {total:.3f} s/it, of which matrix products {gemm:.3f} s "
          f"({100 * gemm / total:.1f}%), running at {rate:.1f} GFLOP/s = {100 * rate / max(peak.wall):.1f}% of the peak "
          "(the FLOPs the fast step runs); the rest runs no FLOPs counted here")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        share = e.self_cpu_time_total / 1e6 / len(crops)
        print(f"    {e.key:<40}{share:>8.3f} s/it {100 * share / total:>6.1f}%  {e.count // len(crops):>5} calls/it")
    print("  the matrix products that take the most time, by shape (M x K @ K x N):")
    for e in sorted(by_shape, key=lambda e: -e.self_cpu_time_total)[:8]:
        a, b = e.input_shapes[1:3] if e.key == "aten::addmm" else e.input_shapes[:2]
        seconds = e.self_cpu_time_total / 1e6 / len(crops)
        calls = e.count // len(crops)
        rate = 2 * a[0] * a[1] * b[1] * calls / seconds / 1e9
        print(f"    {a[0]:>5} x {a[1]:<5} @ {b[0]:>5} x {b[1]:<5}{1e3 * seconds:>8.1f} ms/it {calls:>4} calls/it "
              f"{rate:>7.1f} GFLOP/s = {100 * rate / max(peak.wall):.1f}% of the peak")


def report(rows: list[dict], peak: Peak) -> None:
    wall_peak, cpu_peak = max(peak.wall), max(peak.cpu)
    print(f"fp32 matmul peak (2048^3 torch.mm, {torch.get_num_threads()} threads): {wall_peak:.1f} GFLOP/s wall-clock "
          f"(best of {len(peak.wall)}; worst {min(peak.wall):.1f}); main-thread-CPU estimate {cpu_peak:.1f} GFLOP/s")
    print("GFLOP: the iteration's FLOPs, counted on the plain variant, used for every variant's GFLOP/s; "
          "GFLOP run: what the variant itself runs; % of peak: against the best peak of the whole run; "
          "% beside: median over repeats of each timing's throughput against the peak measured just before it")
    print(f"{'preset':<6}{'N':>3}  {'phase':<12}{'variant':<10}{'GFLOP':>7}{'GFLOP run':>10}{'s/it':>8}{'it/s':>7}"
          f"{'GFLOP/s':>9}{'% of peak':>10}{'% beside':>9}{'cpu s/it':>10}{'cpu % of peak':>15}   wall s/it of each repeat")
    for row in rows:
        wall = {name: statistics.median(v) for name, v in row["wall"].items()}
        cpu = {name: statistics.median(v) for name, v in row["cpu"].items()}
        flops = row["flops"]["plain"]
        for name, run in row["flops"].items():
            gflops = flops / wall[name] / 1e9
            beside = statistics.median(flops / w / 1e9 / p for w, p in zip(row["wall"][name], row["beside"][name]))
            spread = " ".join(f"{v:.3f}" for v in row["wall"][name])
            print(f"{row['preset']:<6}{row['batch']:>3}  {row['phase']:<12}{name:<10}{flops / 1e9:>7.1f}{run / 1e9:>10.1f}"
                  f"{wall[name]:>8.3f}{1 / wall[name]:>7.2f}{gflops:>9.1f}{100 * gflops / wall_peak:>9.1f}%"
                  f"{100 * beside:>8.1f}%{cpu[name]:>10.3f}"
                  f"{100 * flops / cpu[name] / 1e9 / cpu_peak:>14.1f}%   {spread}")
        print(f"{'':<11}fast/plain: {wall['plain'] / wall['fast']:.2f}x wall-clock, {cpu['plain'] / cpu['fast']:.2f}x "
              f"main-thread CPU; data pipeline (2 x CropSampler.sample) {1e3 * row['data']:.3f} ms = "
              f"{100 * row['data'] / wall['fast']:.3f}% of the fast step")
        print(f"{'':<11}generator weight average update {1e3 * row['ema']:.2f} ms = {100 * row['ema'] / wall['fast']:.1f}% "
              f"of the fast step ({'included in the times above' if row['ema_on'] else 'off in this preset, not in the times above'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["paper", "small"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--phases", nargs="+", choices=["identity", "no-identity"], default=["identity", "no-identity"],
                        help="'identity': with the identity-mapping loss (the first 10^4 iterations); 'no-identity': after")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--breakdown", action="store_true", help="also time the reference step with the GEMM "
                        "convolutions and fused Adam")
    parser.add_argument("--passive-omp", action="store_true", help="OMP_WAIT_POLICY=PASSIVE: for a machine shared "
                        "with other jobs (see above)")
    parser.add_argument("--profile", action="store_true", help="also profile the fast step: matrix products "
                        "against the rest")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"hardware: {hardware()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"{torch.get_num_interop_threads()} inter-op threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average before the run {os.getloadavg()[0]:.2f}")
    peak = Peak()
    peak.measure()
    rows = [
        bench(preset, batch, phase, args, peak)
        for preset in args.presets
        for batch in args.batch
        for phase in args.phases
    ]
    print(f"load average after the run {os.getloadavg()[0]:.2f}")
    report(rows, peak)
    if args.profile:
        for preset in args.presets:
            profile(preset, args, peak)


if __name__ == "__main__":
    main()

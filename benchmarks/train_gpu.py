"""Training speed on a GPU: iterations per second of CycleGAN-VC with torch.compile, CUDA graphs and bf16.

    python benchmarks/train_gpu.py [--preset paper] [--batch 1 4 8] [--variants eager bf16 compile graphs graphs-bf16]
                                   [--iterations 20] [--device cuda] [--check-steps 3]

Variants (each a :class:`cyclegan_vc.training.Trainer` from the same weights, timed on the same crops):

- ``eager``: ``Trainer.train_step`` as it is, fp32 (cuDNN convolutions, fused Adam);
- ``bf16``: ``training.amp=true``, bf16 autocast around the networks (losses and Adam in fp32);
- ``compile``: ``training.compile=default`` (Inductor kernels for the four networks);
- ``compile-bf16``: both;
- ``graphs``: ``training.compile=reduce-overhead``, Inductor plus CUDA graphs (one launch per network call);
- ``graphs-bf16``: CUDA graphs and bf16.

For each batch size and variant: the first iterations of each phase (compilation included) are timed
apart as ``warm-up s``; then ``--iterations`` iterations with the identity loss (the paper's first
10^4) and as many without (the rest) give iterations per second, and ``run h`` projects the hours of
the preset's whole training (``paper``: 400,000 iterations, ``10^4 / it/s with identity + 3.9 * 10^5 /
it/s without``; validation and checkpoints not included). The crops come from an
in-memory ``CropSampler`` as in training (host to device copy included).

The effect of each variant on the numbers: ``--check-steps`` iterations where the variant starts
from the ``eager`` trainer's exact state (weights and Adam moments) and sees the same crops; printed
are the largest relative difference of the two total losses (generator, discriminator) from eager's
(``loss diff``; every loss's on a line of its own, beside eager's value: a term near 0 has large
relative differences), the largest relative L2 difference of one parameter's gradient (``grad diff``)
and that of all gradients together (``grads all``), each the worst over the steps (fp32 variants differ
by float rounding only; bf16 by its 8-bit mantissa).

With ``--device cpu`` (and a small preset: ``--preset debug``) the script runs on the CPU, to check it
where no GPU is at hand; its times there say nothing about a GPU. ``bf16`` there is CPU autocast: its
loss and gradient differences measure bf16's rounding of the same products (``--preset paper --batch 1
--variants eager bf16 --iterations 1``), but on a CPU without native bf16 it runs far slower (30x for ``paper``).

Each row is printed as soon as it is measured, and a variant that fails (for instance CUDA graphs
with this step's two backward passes, never run on a GPU so far) prints ``failed:`` with the error
and the run goes on with the next one, so that a run cut off by a time limit still reports what it
measured. Variants run in the order given: put the ones that matter most first.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cyclegan_vc.config import load_config  # noqa: E402
from cyclegan_vc.training import ROLES, CropSampler, Trainer  # noqa: E402

from _common import hardware  # noqa: E402

VARIANTS = {
    "eager": [],
    "bf16": ["training.amp=true"],
    "compile": ["training.compile=default"],
    "compile-bf16": ["training.compile=default", "training.amp=true"],
    "graphs": ["training.compile=reduce-overhead"],
    "graphs-bf16": ["training.compile=reduce-overhead", "training.amp=true"],
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_features(utterances: int, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((dim, int(rng.integers(300, 901)))).astype(np.float32) for _ in range(utterances)]


def timed(trainer: Trainer, sampler: CropSampler, iterations: int) -> float:
    """Seconds per iteration over ``iterations`` iterations from the sampler."""
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.train_step(sampler.sample("A"), sampler.sample("B"))
    synchronize(trainer.device)
    return (time.perf_counter() - start) / iterations


def differences(eager: Trainer, other: Trainer, sampler: CropSampler, steps: int) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Over ``steps`` iterations that ``other`` starts from ``eager``'s exact state, on the same crops:
    for each loss, its largest relative difference and eager's value there; the largest relative L2
    difference of one parameter's gradient; and that of all gradients together."""
    losses: dict[str, tuple[float, float]] = {}
    grad_error = total_error = 0.0
    for _ in range(steps):
        other.copy_state_from(eager)
        x, y = sampler.sample("A"), sampler.sample("B")
        expected, got = eager.train_step(x, y), other.train_step(x, y)
        for key, value in expected.items():
            if float(value) != 0:
                error = abs(float(got[key]) / float(value) - 1)
                if error >= losses.get(key, (-1.0, 0.0))[0]:
                    losses[key] = (error, float(value))
        squared_error = squared_norm = 0.0
        for role in ROLES:
            for p, q in zip(eager.networks[role].parameters(), other.networks[role].parameters()):
                if p.grad is not None and q.grad is not None:
                    difference = float((q.grad - p.grad).norm())
                    grad_error = max(grad_error, difference / float(p.grad.norm().clamp_min(1e-12)))
                    squared_error += difference**2
                    squared_norm += float(p.grad.norm()) ** 2
        total_error = max(total_error, (squared_error / max(squared_norm, 1e-24)) ** 0.5)
    return losses, grad_error, total_error


def measure(
    name: str, trainer: Trainer, config, features: dict, batch: int, eager: Trainer | None, args: argparse.Namespace
) -> tuple[str, bool]:
    """Time one variant (both phases) and compare it with ``eager``; returns its table row (after the
    variant's name) and whether it is the eager reference."""
    sampler = CropSampler(features, config.training.crop_frames, batch, seed=0)
    rates, warm, details = {}, 0.0, ""
    for phase, step in (("identity", 0), ("no-identity", config.training.identity_steps)):
        trainer.step = step
        trainer._apply_schedule()
        warm += 3 * timed(trainer, sampler, 3)  # compilation, CUDA graph capture, cuDNN autotuning
        trainer.step = step
        rates[phase] = 1 / timed(trainer, sampler, args.iterations)
    run_seconds = config.training.identity_steps / rates["identity"] + (
        config.training.iterations - config.training.identity_steps) / rates["no-identity"]
    if name == "eager":
        loss_diff = grad_diff = total_diff = "-"
    elif eager is not None:
        eager.step = trainer.step = 0
        eager._apply_schedule()
        check = CropSampler(features, config.training.crop_frames, batch, seed=1)
        losses, grad, grads = differences(eager, trainer, check, args.check_steps)
        totals = [losses[key][0] for key in ("generator", "discriminator") if key in losses]
        loss_diff = f"{max(totals):.1e}" if totals else "-"
        grad_diff, total_diff = f"{grad:.1e}", f"{grads:.1e}"
        details = ", ".join(f"{key} {error:.1e} (of {value:.3g})" for key, (error, value) in losses.items())
    else:
        loss_diff = grad_diff = total_diff = "n/a"
    row = (f"{warm:>10.1f}{rates['identity']:>9.2f}{rates['no-identity']:>8.2f}{run_seconds / 3600:>8.2f}"
           f"{loss_diff:>11}{grad_diff:>11}{total_diff:>11}")
    if details:
        row += f"\n{'':>4}{name} against eager, each loss's largest relative difference (of eager's value): {details}"
    return row, name == "eager"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per phase")
    parser.add_argument("--check-steps", type=int, default=3, help="iterations of the loss and gradient comparison")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    device = torch.device(args.device)
    print(f"hardware: {hardware()}")
    if device.type == "cuda":
        print(f"device {torch.cuda.get_device_name(device)}; TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, "
              f"cuDNN {torch.backends.cudnn.allow_tf32}; cuDNN benchmark {torch.backends.cudnn.benchmark}")
    print(f"{'N':>3} {'variant':<13}{'warm-up s':>10}{'it/s id':>9}{'it/s':>8}{'run h':>8}"
          f"{'loss diff':>11}{'grad diff':>11}{'grads all':>11}", flush=True)
    for batch in args.batch:
        base = load_config(args.preset, [f"training.batch_size={batch}"])
        dim = base.model.generator_kwargs.get("in_channels", 24)
        features = {"A": random_features(160, dim, 1), "B": random_features(160, dim, 2)}
        eager = None
        for name in args.variants:
            config = load_config(args.preset, [f"training.batch_size={batch}", *VARIANTS[name]])
            trainer = None
            try:
                trainer = Trainer(config, device=device)
                row, trainer_is_eager = measure(name, trainer, config, features, batch, eager, args)
                if trainer_is_eager:
                    eager = trainer
            except Exception as exc:  # one variant failing (e.g. CUDA graphs with this step) must not end the run
                row = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            print(f"{batch:>3} {name:<13}{row}", flush=True)
            if trainer is not eager:
                del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if device.type == "cuda":
            print(f"    peak memory at batch {batch}: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", flush=True)
            torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()

"""Data-parallel training over processes (torchrun): the process group, gradient averaging, agreement.

``torchrun --nproc-per-node N -m cyclegan_vc train ...`` starts N processes (ranks); each sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, from which :func:`world` joins the process group (NCCL
on CUDA, each rank on GPU ``LOCAL_RANK``; gloo on the CPU). Every rank builds the same networks from
the run's seed and draws its own crops (its samplers seeded from the seed and the rank); after each
backward pass the gradients of every network are averaged over the ranks before its Adam step, so
the update is that of one process on the global batch of N x ``training.batch_size`` crops.

Why the averaging is done here and not by :class:`torch.nn.parallel.DistributedDataParallel`'s
wrapper: DDP averages in hooks that fire as autograd accumulates ``.grad``, but the fast iteration
computes gradients with ``torch.autograd.grad`` and writes the GEMM convolutions' weight gradients
itself (:func:`~.steps.set_gradients`), so the hooks would never fire. :func:`average_gradients`
does what DDP's reducer does (one all-reduce over the gradients flattened into a bucket, then a
division by the number of ranks), once per backward pass. Instance normalisation keeps every sample
independent, so no SyncBatchNorm is needed and the result equals one process on the global batch
within float rounding (tested with gloo on two CPU processes).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["World", "average_gradients", "rank_seed", "world"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """The processes of one training: ``rank`` of ``size`` (size 1: a plain, single-process run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes files (checkpoints, models, logs): rank 0 only."""
        return self.rank == 0

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the ranks (a collective)."""
        if not self.distributed:
            return values
        total = values.detach().clone()
        dist.all_reduce(total)
        return total / self.size

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order), ``None`` on the others (a collective)."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag made true on every rank where it is true on any (one collective for all)."""
        if not self.distributed:
            return tuple(flags)
        values = torch.tensor([1.0 if f else 0.0 for f in flags], device=_device())
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())


_WORLD: World | None = None


def world() -> World:
    """This process's :class:`World`, joining the process group on first use when torchrun started it
    (``WORLD_SIZE`` > 1 in the environment); a single process otherwise."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = World()
        return _WORLD
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        atexit.register(_leave)
    _WORLD = World(rank=rank, size=size, local_rank=local_rank)
    log.info("rank %d of %d (%s)", rank, size, dist.get_backend())
    if rank != 0:  # one voice: the other ranks say only what goes wrong
        logging.getLogger("cyclegan_vc").setLevel(logging.WARNING)
    return _WORLD


def _leave() -> None:
    """Destroy the process group before the interpreter exits, as torch asks. Left to the
    interpreter's teardown, a rank more often aborts after its program has ended ("terminate called
    without an active exception", SIGABRT; rarer with this, not gone: docs/training.md). No barrier:
    after a failure on one rank the others may be inside a collective, and a barrier would hang them."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s crop and mask samplers: the run's seed on rank 0 (a one-process
    run draws what rank 0 of a distributed one draws), one derived from both on the others."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint32)[0])


def average_gradients(params: Iterable[torch.nn.Parameter], world_: World) -> None:
    """Average the ``.grad`` of ``params`` over the ranks in place: one all-reduce of a flat bucket per
    device and dtype (what DDP's reducer does). Parameters without a gradient (the same on every rank,
    since every rank runs the same iteration) are left out."""
    if not world_.distributed:
        return
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world_.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

"""Worker processes of a conversion: the model loaded in each worker, and the per-file and per-chunk tasks they run.

Workers are started with "spawn" by :func:`~cyclegan_vc.conversion.convert` (and by ``evaluate``):
each loads the model once (:func:`load_in_worker`, one torch thread) and then converts whole files
(:func:`convert_in_worker`) or single chunks of a long file (:func:`pooled_segments`, whose joins
are made in order in the calling process, so the output is the same as without workers).
"""

from __future__ import annotations

import collections
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..features import FeatureConfig
from ..options import ConversionOptions
from .chunking import Chunk
from .converter import SegmentMap, VoiceConverter

__all__ = ["convert_in_worker", "init_worker", "load_in_worker", "pooled_segments"]

_WORKER: dict = {}


def load_in_worker(model: str, options: ConversionOptions, device: str = "cpu") -> VoiceConverter:
    """The model in a worker process (of :func:`~cyclegan_vc.conversion.convert` or ``evaluate``):
    loaded onto ``device`` with ``options``, with one torch thread (the workers share the cores)."""
    torch.set_num_threads(1)
    return VoiceConverter.load(model, device=device, options=options)


def init_worker(model: str, options: ConversionOptions, device: str = "cpu") -> None:
    """The pool's initializer: load the model once per worker."""
    _WORKER["converter"] = load_in_worker(model, options, device)


def _segment_in_worker(
    samples: np.ndarray, direction: str, config: FeatureConfig
) -> tuple[np.ndarray, dict[str, float]]:
    """One chunk of a long file in a worker process: ``(converted segment, seconds per stage)``."""
    converter: VoiceConverter = _WORKER["converter"]
    converter.reset_timings()
    return converter.convert_segment(samples, direction, config), dict(converter.timings)


def convert_in_worker(path: Path, target: Path, direction: str, keep_rate: bool) -> tuple[str | None, dict[str, float]]:
    """One file in a worker process: ``(problem or None, seconds per stage)``."""
    from .batch import convert_one  # batch starts the pool, so it imports this module

    converter: VoiceConverter = _WORKER["converter"]
    converter.reset_timings()
    problem = convert_one(converter, path, target, direction, keep_rate, lambda seconds: None)
    return problem, dict(converter.timings)


def pooled_segments(converter: VoiceConverter, pool: Executor, window: int) -> SegmentMap:
    """A :data:`~cyclegan_vc.conversion.converter.SegmentMap` whose chunks are converted by ``pool``'s
    workers, at most ``window`` in flight (memory stays bounded), yielded in order; the workers' stage
    times are added to ``converter.timings``. An abandoned file (a failed chunk, an interrupt) cancels
    its chunks not yet started."""

    def collect(chunk: Chunk, future: Future) -> tuple[Chunk, np.ndarray]:
        seg, timings = future.result()
        converter.add_timings(timings)
        return chunk, seg

    def segments(
        chunks: Iterable[tuple[Chunk, np.ndarray]], direction: str, config: FeatureConfig
    ) -> Iterator[tuple[Chunk, np.ndarray]]:
        pending: collections.deque = collections.deque()
        try:
            for chunk, samples in chunks:
                pending.append((chunk, pool.submit(_segment_in_worker, samples, direction, config)))
                if len(pending) >= window:
                    yield collect(*pending.popleft())
            while pending:
                yield collect(*pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()

    return segments

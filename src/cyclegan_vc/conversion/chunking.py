"""Chunking of long inputs: boundaries at quiet points, the audio each chunk analyses, the cross-fade joins.

Boundaries lie near every ``chunk_seconds`` of audio, each moved to the quietest 10 ms within a
quarter chunk (at most 1 s) of its nominal place; every chunk is analysed with ``context_seconds``
of audio on both sides (so F0 tracking and the generator's receptive field are unaffected near the
joins), and neighbouring chunks are joined with a 20 ms linear cross-fade centred on the boundary.
What differs between chunks, the generator's instance-normalisation statistics and the phase of
WORLD's excitation pulses, is inaudible at a quiet point. An input of up to 1.5 chunks is one chunk.

The waveform may arrive in blocks (a streamed file): :class:`Chunker` holds at most about two
chunks of samples, and :func:`cross_fade` needs only the previous chunk's 20 ms tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

__all__ = ["FADE_SECONDS", "Chunk", "Chunker", "cross_fade", "plan_chunks"]

FADE_SECONDS = 0.01  # half the cross-fade; also the window of the quiet-point search


@dataclass(frozen=True)
class Chunk:
    """One chunk of a long input, in samples at the model's rate.

    The chunk owns ``[start, end)`` of the output; ``[lo, hi)`` is what is analysed (the chunk with
    ``context_seconds`` of audio and the 10 ms cross-fade margin on each side, clipped to the input).
    ``last`` marks the final chunk (its ``end`` is the input's length).
    """

    start: int
    end: int
    lo: int
    hi: int
    last: bool


class Chunker:
    """The chunks of a waveform that arrives in blocks: iterating yields ``(chunk, samples[lo:hi])`` in order.

    Holds at most about two chunks of samples: samples before the current chunk's analysis window
    are dropped as soon as it is planned.

    Args:
        blocks: 1-D float blocks of the waveform, in order, at ``rate`` Hz.
        rate: sample rate (Hz).
        chunk_seconds: nominal chunk length (at least 80 ms is used).
        context_seconds: audio analysed on each side of a chunk and discarded.
    """

    def __init__(self, blocks: Iterable[np.ndarray], rate: int, chunk_seconds: float, context_seconds: float):
        self.blocks = iter(blocks)
        self.fade = int(FADE_SECONDS * rate)
        self.chunk = max(int(round(chunk_seconds * rate)), 8 * self.fade)
        self.context = int(round(context_seconds * rate))
        self.reach = min(self.chunk // 4, rate)
        self.buf = np.zeros(0)
        self.buf_start = 0  # absolute index of buf[0]
        self.eof = False

    @property
    def available(self) -> int:
        """Absolute end of the samples read so far."""
        return self.buf_start + len(self.buf)

    def fill(self, upto: int) -> None:
        """Read blocks until samples ``[.., upto)`` are buffered or the input ends."""
        parts = [self.buf] if len(self.buf) else []
        have = self.available
        while have < upto and not self.eof:
            try:
                block = np.asarray(next(self.blocks), dtype=np.float64).reshape(-1)
            except StopIteration:
                self.eof = True
                break
            parts.append(block)
            have += len(block)
        if have > self.available:
            self.buf = parts[0] if len(parts) == 1 else np.concatenate(parts)

    def samples(self, lo: int, hi: int) -> np.ndarray:
        return self.buf[lo - self.buf_start : hi - self.buf_start]

    def quiet_point(self, nominal: int) -> int:
        """The centre of the quietest 10 ms within ``reach`` samples of ``nominal``."""
        win = self.fade
        lo, hi = max(win, nominal - self.reach), nominal + self.reach
        frames = self.samples(lo, hi)[: (hi - lo) // win * win].reshape(-1, win)
        return lo + int(np.argmin(np.square(frames).sum(axis=1))) * win + win // 2

    def __iter__(self) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Yield ``(chunk, samples[lo:hi])`` in order."""
        start, k = 0, 1
        while True:
            nominal = k * self.chunk
            # a boundary near `nominal` exists when more than half a chunk follows it
            self.fill(nominal + self.chunk // 2 + 1)
            last = self.available <= nominal + self.chunk // 2
            if last:
                end = self.available  # the input ended
            else:
                self.fill(nominal + self.reach)
                end = self.quiet_point(nominal)
            margin = 0 if (start == 0 and last) else self.fade + self.context
            lo = max(0, start - margin)
            self.fill(end + margin)
            hi = min(self.available, end + margin)
            yield Chunk(start, end, lo, hi, last), self.samples(lo, hi)
            if last:
                return
            # drop what no later chunk analyses (a view: no copy; the next fill() compacts)
            keep = max(self.buf_start, end - self.fade - self.context)
            self.buf, self.buf_start = self.samples(keep, self.available), keep
            start, k = end, k + 1


def plan_chunks(wave: np.ndarray, rate: int, chunk_seconds: float = 30.0, context_seconds: float = 1.0) -> list[Chunk]:
    """The chunks a waveform ``(samples,)`` at ``rate`` Hz is converted in (what
    :meth:`~cyclegan_vc.conversion.VoiceConverter.convert` does with the same settings). One chunk
    when the input is at most 1.5 chunks long."""
    return [chunk for chunk, _ in Chunker([np.asarray(wave, dtype=np.float64)], rate, chunk_seconds, context_seconds)]


def cross_fade(
    segments: Iterable[tuple[Chunk, np.ndarray]], fade: int, on_chunk: Callable[[int], None] | None = None
) -> Iterator[np.ndarray]:
    """Join converted chunks: ``(chunk, converted samples[lo:hi])`` in order -> output pieces in order.

    Each chunk contributes ``[start, end)`` and, around every inner boundary, a linear cross-fade over
    ``2 * fade`` samples centred on it (the ramps sum to one, so a pointwise conversion is joined
    exactly). The pieces add up to as many samples as the input. ``on_chunk(samples)`` is called
    after each chunk with the number of samples it owns.
    """
    ramp = np.linspace(0.0, 1.0, 2 * fade + 2)[1:-1]  # ramp + ramp[::-1] == 1
    tail = None  # the faded-out end of the previous chunk, over [start - fade, start + fade)
    for chunk, seg in segments:
        a = chunk.start - fade if chunk.start else 0
        b = chunk.end if chunk.last else chunk.end + fade
        piece = seg[a - chunk.lo : b - chunk.lo].copy()
        if tail is not None:
            piece[: 2 * fade] = piece[: 2 * fade] * ramp + tail
        if not chunk.last:
            piece[-2 * fade :] *= ramp[::-1]
            piece, tail = piece[: -2 * fade], piece[-2 * fade :]
        if on_chunk is not None:
            on_chunk(chunk.end - chunk.start)
        yield piece

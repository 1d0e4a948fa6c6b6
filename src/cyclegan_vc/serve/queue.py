"""The bounded conversion queue: ``workers`` conversions at a time, ``queue`` more waiting, the rest refused.

A request takes a :meth:`~ConversionQueue.ticket` before its upload is read, so that a busy server
refuses at once (503) instead of reading, storing and parsing uploads it cannot convert: at most
``workers + queue`` requests are admitted, whatever the number of clients. A conversion runs in one
of ``workers`` threads of this process (WORLD releases the GIL; the networks are shared). Its
timeout counts from the moment it has a worker: past it the client gets 504 and the conversion is
asked to stop (it stops at its next chunk boundary); its worker stays busy until it has stopped, so
no more than ``workers`` conversions ever run.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, TypeVar

from .errors import ApiError
from .upload import Scratch

__all__ = ["Cancelled", "ConversionQueue"]

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a conversion that was asked to stop (its client's timeout passed)."""


class ConversionQueue:
    """Admission, worker threads and timeouts of the conversions (module docstring).

    Attributes:
        workers, queue, timeout_s: as given (:class:`~cyclegan_vc.serve.limits.ServerLimits`).
        running: conversions holding a worker now; ``waiting``: admitted requests not yet converting
            (still uploading, or waiting for a worker).
        served, refused, timed_out, failed: counts since the start, for ``/healthz``.
    """

    def __init__(self, workers: int, queue: int, timeout_s: float):
        self.workers, self.queue, self.timeout_s = workers, queue, timeout_s
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="cyclegan-vc-convert")
        self._slots = asyncio.Semaphore(workers)
        self._recent: deque[float] = deque(maxlen=20)  # wall seconds of the last conversions
        self.admitted = self.running = 0
        self.served = self.refused = self.timed_out = self.failed = 0

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self.running)

    def stats(self) -> dict[str, int | float]:
        return {
            "workers": self.workers, "queue": self.queue, "timeout_s": self.timeout_s,
            "running": self.running, "waiting": self.waiting,
            "served": self.served, "refused": self.refused, "timed_out": self.timed_out, "failed": self.failed,
        }

    def close(self) -> None:
        """Stop taking work; conversions not yet started are dropped, running ones finish in their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _retry_after(self) -> int:
        """Seconds until a place is likely free: the recent mean conversion time per worker's share of the queue."""
        mean = statistics.fmean(self._recent) if self._recent else 10.0
        return max(1, math.ceil(mean * self.admitted / self.workers))

    @asynccontextmanager
    async def ticket(self) -> AsyncIterator[None]:
        """Admit one request for as long as the block runs, or raise 503 when ``workers + queue`` are admitted."""
        if self.admitted >= self.workers + self.queue:
            self.refused += 1
            raise ApiError(
                503,
                f"the server is busy: {self.running} conversion(s) running and {self.waiting} waiting, "
                f"which is all it takes at once; try again in a moment",
                retry_after=self._retry_after(),
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, work: Callable[[threading.Event], T], scratch: Scratch, file: str | None = None) -> T:
        """Run ``work(stop)`` in a worker thread once one is free; return its result or raise what it raised.

        ``file`` (the upload's name) goes into the errors it raises. ``stop`` is set when the timeout
        passes (the client then gets 504 at once) or the request is cancelled; ``work`` should raise
        :class:`Cancelled` when it sees it. ``scratch`` (the request's temporary folder) is held until
        ``work`` has ended, even after the client has had its answer.
        """
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        started = loop.time()
        self.running += 1
        scratch.hold()
        try:
            future = loop.run_in_executor(self._executor, work, stop)
        except RuntimeError:  # the executor is shut down: the server is stopping
            self._finished(None, started, scratch)
            raise ApiError(503, "the server is shutting down", file=file) from None
        future.add_done_callback(lambda done: self._finished(done, started, scratch))
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except asyncio.TimeoutError:
            stop.set()
            self.timed_out += 1
            raise ApiError(
                504, f"the conversion took longer than this server's limit of {self.timeout_s:g} s; "
                "try a shorter recording", file=file,
            ) from None
        except asyncio.CancelledError:
            stop.set()
            raise
        except ApiError as exc:
            self.failed += 1
            exc.file = exc.file or file
            raise
        except Exception:
            self.failed += 1
            raise
        self.served += 1
        return result

    def _finished(self, done: asyncio.Future | None, started: float, scratch: Scratch) -> None:
        """A worker is free again (called in the event loop when a conversion has ended, however it ended)."""
        self.running -= 1
        self._slots.release()
        if done is not None and not done.cancelled() and done.exception() is None:
            self._recent.append(asyncio.get_running_loop().time() - started)
        scratch.release()

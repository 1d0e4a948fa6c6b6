"""Worker process pools of the parallel stages (prepare, convert, evaluate): no orphans, a prompt Ctrl-C.

Three faults of a plain :class:`~concurrent.futures.ProcessPoolExecutor` that these pools remove:

* when the parent is killed (SIGKILL, or SIGTERM, whose default action skips every ``finally``) its
  workers lived on with parent 1, each holding a model or WORLD's buffers. Here every worker watches
  its parent and exits as soon as it is gone;
* a Ctrl-C reached the workers too (they share the terminal's process group), each printing a
  traceback, and the parent then waited for every queued file. Here workers ignore SIGINT, and
  :func:`stop_pool` cancels what has not started and waits only for the files in progress;
* a Ctrl-C while a worker was being spawned could leave a half-started process. Submitting (which
  spawns workers) holds SIGINT back until the worker has started.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

__all__ = ["process_pool", "stop_pool"]

#: seconds between two looks of a worker at its parent
_WATCH_PERIOD = 0.5


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_WATCH_PERIOD)
        if os.getppid() != parent:  # reparented: the parent is gone, no one will read our results
            os._exit(1)


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C stops
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    if initializer is not None:
        initializer(*initargs)


class _Pool(ProcessPoolExecutor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any):
        # submit() may spawn a worker: a SIGINT in the middle of that would leave it half started
        if threading.current_thread() is not threading.main_thread():
            return super().submit(fn, *args, **kwargs)
        received: list[Any] = []
        previous = signal.signal(signal.SIGINT, lambda *a: received.append(a))
        try:
            return super().submit(fn, *args, **kwargs)
        finally:
            signal.signal(signal.SIGINT, previous)
            if received and callable(previous):  # the SIGINT held back, delivered now
                previous(*received[0])


def process_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes that end with their parent and ignore SIGINT.

    ``initializer(*initargs)`` runs once in each worker, as for :class:`ProcessPoolExecutor`. End the
    pool with :func:`stop_pool` (also on an interrupt).
    """
    return _Pool(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, tuple(initargs)),
    )


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the tasks not started and wait for the workers to finish those in progress and exit."""
    pool.shutdown(wait=True, cancel_futures=True)

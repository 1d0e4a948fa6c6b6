"""Loaded models kept in memory: at most ``size`` of them, the least recently used dropped first.

A model is loaded once however many requests ask for it at the same time, and loaded again when its
file has changed since (a run still training rewrites its ``model_latest``). The cache hands out
:class:`~cyclegan_vc.conversion.VoiceConverter` objects that share one loaded model's networks and
statistics but each carry a request's own conversion options, so that concurrent requests never see
each other's options.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from ..conversion import VoiceConverter
from ..options import ConversionOptions

__all__ = ["ModelCache"]


class ModelCache:
    """Loaded models by file (thread-safe; called from the conversion threads).

    Args:
        size: models kept loaded at most.
        device: where they run (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
    """

    def __init__(self, size: int, device: str = "auto"):
        self.size = size
        self.device = device
        self._lock = threading.Lock()
        self._loaded: OrderedDict[Path, tuple[tuple[int, int], VoiceConverter]] = OrderedDict()
        self._loading: dict[Path, threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._loaded)

    def _cached(self, path: Path, version: tuple[int, int]) -> VoiceConverter | None:
        with self._lock:
            found = self._loaded.get(path)
            if found is None or found[0] != version:
                return None
            self._loaded.move_to_end(path)
            return found[1]

    def load(self, path: Path) -> VoiceConverter:
        """The model in ``path`` (a resolved model file), loaded now if it is not loaded or has changed."""
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        if (converter := self._cached(path, version)) is not None:
            return converter
        with self._lock:
            loading = self._loading.setdefault(path, threading.Lock())
        with loading:  # one load per file at a time; the others wait for it
            if (converter := self._cached(path, version)) is not None:
                return converter
            converter = VoiceConverter.load(path, device=self.device)
            with self._lock:
                self._loaded[path] = (version, converter)
                self._loaded.move_to_end(path)
                while len(self._loaded) > self.size:
                    self._loaded.popitem(last=False)
        return converter

    def converter(self, path: Path, options: ConversionOptions) -> VoiceConverter:
        """A converter of the model in ``path`` with ``options``: the cached model's networks and
        statistics, its own options and timings."""
        base = self.load(path)
        return VoiceConverter(
            generators=base.generators,
            stats=base.stats,
            features=base.features,
            speakers=base.speakers,
            device=base.device,
            chunk_seconds=base.chunk_seconds,
            context_seconds=base.context_seconds,
            options=options,
            step=base.step,
        )

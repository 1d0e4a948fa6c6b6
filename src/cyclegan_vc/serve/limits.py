"""The server's limits: one typed record of what a client may send and how much work runs at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..utils import UserError

__all__ = ["MB", "ServerLimits"]

#: One megabyte as the limits count it (10**6 bytes, as browsers show file sizes).
MB = 1_000_000


@dataclass(frozen=True)
class ServerLimits:
    """What ``cyclegan-vc serve`` accepts and how many conversions it runs; the defaults are the flags'.

    Attributes:
        max_upload_mb: largest request body (the uploaded file and the form's fields), in MB (10**6
            bytes); a larger one is refused with 413 while it streams in, before it is all read.
        max_seconds: longest recording accepted (seconds of audio); a longer one is refused with 413.
        workers: conversions running at once (threads of this process, which share the loaded models).
        queue: conversions that may wait for a worker; one more is refused at once with 503.
        timeout_s: wall seconds a conversion may take once it has a worker (model loading included);
            after that the client gets 504 and the conversion stops at its next chunk boundary.
        cached_models: loaded models kept in memory (least recently used dropped first).
    """

    max_upload_mb: float = 50.0
    max_seconds: float = 120.0
    workers: int = 2
    queue: int = 8
    timeout_s: float = 180.0
    cached_models: int = 4

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_seconds", "timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UserError(f"server limit {name} must be a number > 0, got {value!r}")
        for name, least in (("workers", 1), ("queue", 0), ("cached_models", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"server limit {name} must be a whole number >= {least}, got {value!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    def to_dict(self) -> dict:
        return asdict(self)

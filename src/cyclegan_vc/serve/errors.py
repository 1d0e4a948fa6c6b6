"""API errors: one exception with its HTTP status, a message a person can act on, and the file it concerns."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["ApiError", "ErrorBody"]


class ErrorBody(BaseModel):
    """The JSON body of every error response (never a traceback)."""

    status: int
    error: str
    file: str | None = None


class ApiError(Exception):
    """A request the server refuses: ``status`` (400 bad input, 404 unknown model, 413 too large,
    503 busy, 504 timed out, ...), a one-line ``message`` and the uploaded ``file``'s name when one is
    concerned. ``retry_after`` (seconds) is sent as a ``Retry-After`` header."""

    def __init__(self, status: int, message: str, file: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.file = file
        self.retry_after = retry_after

    def body(self) -> dict:
        return ErrorBody(status=self.status, error=self.message, file=self.file).model_dump()

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

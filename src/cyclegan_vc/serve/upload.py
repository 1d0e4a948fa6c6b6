"""Uploads: a request's temporary folder, and the multipart form streamed into it with its size bounded as it arrives.

Starlette's own form parser reads the whole body (spooling files to the system's temporary folder)
before a route sees it; this one counts the bytes while they stream in and stops at the limit, and
writes the file's bytes only into the folder it is given, under a name of its own (the client's name
is kept for messages, never used as a path).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..audio import AUDIO_EXTENSIONS
from .errors import ApiError
from .limits import MB

__all__ = ["MAX_FIELD_BYTES", "MAX_FIELDS", "Scratch", "Upload", "client_name", "read_upload"]

#: Form fields besides the file, and the bytes of each value.
MAX_FIELDS = 32
MAX_FIELD_BYTES = 4096


class Scratch:
    """A request's temporary folder inside ``root``, removed with everything in it once its last holder
    releases it: the request (which holds it from the start), and its conversion while that runs
    (:meth:`~cyclegan_vc.serve.queue.ConversionQueue.run`), which may outlive the request's answer.
    Used from the event loop's thread only."""

    def __init__(self, root: Path):
        self.path = Path(tempfile.mkdtemp(prefix="request-", dir=root))
        self._holders = 1

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class Upload:
    """A parsed form: its text ``fields``, and the uploaded file (``filename``: the client's name, for
    messages; ``path``: where its ``size`` bytes are, inside the temporary folder), if one came."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0


def client_name(raw: str) -> str:
    """A client's file name for messages: its last path component (some browsers send a whole path),
    without control characters, at most 200 characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:200] or "upload"


class _Form:
    """python-multipart callbacks collecting fields and writing the one file part to ``target``."""

    def __init__(self, folder: Path, file_field: str):
        self.folder = folder
        self.file_field = file_field
        self.upload = Upload()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._value = bytearray()
        self._handle = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._value = b"", None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ApiError(400, "a form part has no name (Content-Disposition: form-data; name=...)")
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self._name != self.file_field or self.upload.path is not None:
                raise ApiError(400, f"send exactly one file, in the form field {self.file_field!r}")
            self.upload.filename = client_name(options[b"filename"].decode("utf-8", "replace"))
            suffix = Path(self.upload.filename).suffix.lower()
            # libsndfile finds the format from the bytes; a known audio extension is kept as a hint
            self.upload.path = self.folder / ("upload" + (suffix if suffix in AUDIO_EXTENSIONS else ""))
            self._handle = open(self.upload.path, "wb")
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise ApiError(400, f"too many form fields (at most {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is not None:
            self._handle.write(data[start:end])
            self.upload.size += end - start
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise ApiError(400, f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._handle is not None:
            self.close()
        elif self._name is not None:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")


async def read_upload(request: Request, folder: Path, max_bytes: int, file_field: str = "file") -> Upload:
    """Parse ``request``'s ``multipart/form-data`` body, writing its file part into ``folder``.

    Raises :class:`~cyclegan_vc.serve.errors.ApiError`: 413 when the body is (announced or found to be)
    larger than ``max_bytes``, 400 for a body that is not a well-formed form with at most one file.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(400, f"send the recording as multipart/form-data with a {file_field!r} file field")
    too_large = f"the upload is larger than this server's limit of {max_bytes / MB:g} MB"
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > max_bytes:
        raise ApiError(413, too_large)
    form = _Form(folder, file_field)
    callbacks = {name: getattr(form, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end",
    )}
    parser = MultipartParser(options[b"boundary"], callbacks)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:  # the part within the limit is still read: it may name the file
                parser.write(chunk[: len(chunk) - (received - max_bytes)])
                raise ApiError(413, too_large, file=form.upload.filename)
            parser.write(chunk)
        parser.finalize()
    except ApiError as exc:
        exc.file = exc.file or form.upload.filename
        raise
    except FormParserError as exc:
        raise ApiError(400, f"the form could not be read ({exc})", file=form.upload.filename) from None
    except ClientDisconnect:
        raise ApiError(400, "the upload was interrupted", file=form.upload.filename) from None
    finally:
        form.close()
    return form.upload

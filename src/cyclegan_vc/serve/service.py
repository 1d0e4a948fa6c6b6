"""The conversion service: an upload checked into a conversion request, converted in the queue into WAV bytes.

One code path with ``cyclegan-vc convert``: every recording goes through
:meth:`VoiceConverter.convert_file <cyclegan_vc.conversion.VoiceConverter.convert_file>`, the function
that converts each file of a ``convert`` batch (streamed, chunked, written atomically), with the
request's :class:`~cyclegan_vc.options.ConversionOptions`. Form fields absent from a request take
the options' defaults (the paper's conversion, as on the command line); the page preselects
:data:`RECOMMENDED`.
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from starlette.requests import Request

from ..audio import AudioError
from ..directions import DIRECTIONS
from ..options import ConversionOptions
from .cache import ModelCache
from .catalog import Catalog, ModelEntry
from .errors import ApiError
from .limits import ServerLimits
from .queue import Cancelled, ConversionQueue
from .upload import Scratch, Upload, read_upload

__all__ = ["FORM_FIELDS", "RECOMMENDED", "Converted", "ConvertRequest", "Service"]

#: The recommended conversion (README, docs/results.md): ``--smooth 6`` with the generator's energy.
RECOMMENDED = ConversionOptions(energy="generator", smooth=6)

#: The form of ``POST /api/convert``, besides the ``file``: name -> what it holds.
FORM_FIELDS = {
    "model": "a model id from GET /api/models (required)",
    "direction": "A2B (speaker A to B, default) or B2A",
    "smooth": "passes of the [1, 2, 1]/4 filter over the generator's output (default 0; recommended 6)",
    "energy": "the output's frame energy (c0): generator (default) or source",
    "f0_range": "where F0 is searched in the input: full (default) or speaker",
    "f0_method": "F0 estimator: harvest or dio (default: the model's)",
}


@dataclass(frozen=True)
class ConvertRequest:
    """A checked request: the model, the direction, the options, and the uploaded file (its client
    ``filename``, for messages and the download's name; its ``path`` in the temporary folder)."""

    model: ModelEntry
    direction: str
    options: ConversionOptions
    filename: str
    path: Path


@dataclass(frozen=True)
class Converted:
    """A conversion's output: the WAV file's bytes, its ``sample_rate`` (Hz) and duration ``seconds``,
    the model's training ``step``, and the conversion's ``wall_seconds``."""

    wav: bytes
    sample_rate: int
    seconds: float
    step: int | None
    wall_seconds: float


def parse_request(upload: Upload, catalog: Catalog) -> ConvertRequest:
    """The form's fields checked (400 for a bad one, 404 for an unknown model) into a :class:`ConvertRequest`."""
    name = upload.filename
    if upload.path is None:
        raise ApiError(400, "no recording: send the audio file in the form field 'file'")
    if upload.size == 0:
        raise ApiError(400, f"{name}: empty file (0 bytes)", file=name)
    fields = upload.fields
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown form field(s) {unknown}; the fields are file, {', '.join(FORM_FIELDS)}", file=name)
    if not fields.get("model"):
        raise ApiError(400, "no model: send a model id from GET /api/models in the form field 'model'", file=name)
    try:
        model = catalog.get(fields["model"])
    except ApiError as exc:
        exc.file = name
        raise
    direction = fields.get("direction") or "A2B"
    if direction not in DIRECTIONS:
        raise ApiError(400, f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}", file=name)
    changes: dict[str, object] = {k: fields[k] for k in ("energy", "f0_range", "f0_method") if fields.get(k)}
    if fields.get("smooth"):
        if not re.fullmatch(r"\d{1,3}", fields["smooth"].strip()):
            raise ApiError(400, f"smooth must be a whole number of passes >= 0, got {fields['smooth']!r}", file=name)
        changes["smooth"] = int(fields["smooth"])
    try:
        options = ConversionOptions().replace(**changes)
    except ValueError as exc:
        raise ApiError(400, f"conversion options: {exc}", file=name) from None
    return ConvertRequest(model, direction, options, name, upload.path)


def _client_words(message: str, request: ConvertRequest) -> str:
    """``message`` with the upload's temporary path replaced by the client's file name."""
    return message.replace(str(request.path), request.filename)


def probe(request: ConvertRequest, max_seconds: float) -> float:
    """The recording's duration (s) from its header: 400 when it is not audio libsndfile reads, 413 when
    longer than ``max_seconds``."""
    name = request.filename
    try:
        info = sf.info(str(request.path))
    except Exception as exc:  # libsndfile raises several types for unreadable input
        raise ApiError(400, f"{name}: not a readable audio file ({_client_words(str(exc), request)})", file=name) from None
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds > max_seconds:
        raise ApiError(413, f"{name}: {seconds:.1f} s of audio, longer than this server's limit of {max_seconds:g} s", file=name)
    return seconds


def convert_upload(cache: ModelCache, catalog: Catalog, request: ConvertRequest, out: Path, stop: threading.Event) -> Converted:
    """Convert the uploaded recording into ``out`` with the cached model (runs in a worker thread;
    raises :class:`~cyclegan_vc.serve.queue.Cancelled` at the next chunk once ``stop`` is set)."""
    start = time.perf_counter()
    converter = cache.converter(catalog.model_file(request.model), request.options)

    def check(_seconds: float = 0.0) -> None:
        if stop.is_set():
            raise Cancelled

    check()
    try:
        converter.convert_file(request.path, out, request.direction, on_chunk=check)
    except AudioError as exc:
        raise ApiError(400, f"{request.filename}: {_client_words(exc.problem, request)}", file=request.filename) from None
    info = sf.info(str(out))
    return Converted(
        wav=out.read_bytes(),
        sample_rate=int(info.samplerate),
        seconds=info.frames / info.samplerate,
        step=converter.step,
        wall_seconds=time.perf_counter() - start,
    )


class Service:
    """What the server does, apart from HTTP: the catalogue of ``models``, the model cache, the queue,
    the folder of the requests' temporary folders (removed by :meth:`close`).

    Raises :class:`~cyclegan_vc.utils.UserError` when ``models`` is not a folder.
    """

    def __init__(self, models: str | Path, limits: ServerLimits, device: str = "auto"):
        self.limits = limits
        self.catalog = Catalog(models)
        self.cache = ModelCache(limits.cached_models, device)
        self.queue = ConversionQueue(limits.workers, limits.queue, limits.timeout_s)
        self.scratch_root = Path(tempfile.mkdtemp(prefix="cyclegan-vc-serve-"))

    def close(self) -> None:
        self.queue.close()
        shutil.rmtree(self.scratch_root, ignore_errors=True)

    async def convert(self, http: Request) -> tuple[ConvertRequest, Converted]:
        """Admit, read, check and convert one ``POST /api/convert``; raises :class:`ApiError` for what it refuses."""
        async with self.queue.ticket():
            scratch = Scratch(self.scratch_root)
            try:
                upload = await read_upload(http, scratch.path, self.limits.max_upload_bytes)
                request = parse_request(upload, self.catalog)
                await asyncio.to_thread(probe, request, self.limits.max_seconds)
                job = functools.partial(convert_upload, self.cache, self.catalog, request, scratch.path / "converted.wav")
                return request, await self.queue.run(job, scratch, file=request.filename)
            finally:
                scratch.release()

"""The web application: the page, the HTTP API and its error responses (FastAPI).

Routes: ``GET /`` the page (its script and style under ``/static/``), ``GET /api/models``,
``POST /api/convert`` (multipart form -> ``audio/wav``), ``GET /healthz``, ``GET /reports/<key>/...``
(an evaluation's ``report.html`` and its audio, nothing else) and ``GET /openapi.json``. FastAPI's
``/docs`` pages are off: they load their scripts from a CDN, and the server works offline.

Every error is JSON (:class:`~cyclegan_vc.serve.errors.ErrorBody`): a status, a message a person can
act on and the uploaded file's name when one is concerned; an unexpected fault is logged with its
traceback on the server and answered with a one-line 500.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import __version__
from ..options import ConversionOptions
from .card import metric_columns
from .errors import ApiError, ErrorBody
from .limits import ServerLimits
from .schema import Health, ModelList
from .service import FORM_FIELDS, RECOMMENDED, Service

__all__ = ["create_app"]

log = logging.getLogger(__name__)

#: The page's own files: name -> media type. Nothing else is served from the package.
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}

_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: A report is a file of the served folder: shown sandboxed (no script runs, no form is sent).
_REPORT_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; media-src 'self'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_ERRORS = {
    400: "the recording or a form field cannot be used",
    404: "no such model (or report file) on this server",
    413: "the upload or the recording is longer than the server's limits",
    503: "the server is busy (its queue is full); retry after Retry-After seconds",
    504: "the conversion took longer than the server's timeout",
}


def _download_name(filename: str, direction: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).stem).strip("._") or "recording"
    return f"{stem[:80]}-{direction}.wav"


def _error(status: int, message: str, file: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = ErrorBody(status=status, error=message, file=file).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(models: str | os.PathLike, limits: ServerLimits | None = None, device: str = "auto") -> FastAPI:
    """The application serving every model under ``models`` within ``limits`` (default :class:`ServerLimits`).

    The folder is scanned here (a :class:`~cyclegan_vc.utils.UserError` when it is not one); the
    requests' temporary folders are removed when the application shuts down (``app.state.service.close()``
    does it for an application that is never started).
    """
    limits = limits or ServerLimits()
    service = Service(models, limits, device)
    static = {name: files("cyclegan_vc.serve").joinpath("static", name).read_bytes() for name in (*_STATIC, "index.html")}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="cyclegan-vc",
        version=__version__,
        summary="Voice conversion with trained CycleGAN-VC models.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.file, exc.headers())

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        messages = {404: "no such page or API route", 405: "this route does not take that method"}
        return _error(exc.status_code, messages.get(exc.status_code, str(exc.detail)), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return _error(400, f"bad request: {'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}: {exc} (the server's log has the details)")

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(static["index.html"], media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in _STATIC:
            raise ApiError(404, f"no static file {name!r}")
        return Response(static[name], media_type=_STATIC[name], headers=_PAGE_HEADERS)

    @app.get("/api/models", response_model=ModelList, summary="The models served, with their cards")
    def list_models() -> dict:
        return {
            "models": [entry.describe(service.catalog.root) for entry in service.catalog.models.values()],
            "metrics": metric_columns(),
            "limits": limits.to_dict(),
            "default_options": ConversionOptions().to_dict(),
            "recommended_options": RECOMMENDED.to_dict(),
            "form_fields": {"file": "the recording: any format libsndfile reads (WAV, FLAC, OGG, MP3, ...)", **FORM_FIELDS},
        }

    form_schema = {
        "type": "object",
        "required": ["file", "model"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "the recording (WAV, FLAC, OGG, MP3, ...)"},
            **{name: {"type": "string", "description": text} for name, text in FORM_FIELDS.items()},
        },
    }

    @app.post(
        "/api/convert",
        summary="Convert a recording",
        description=f"Converts the uploaded recording with a model; returns a 16-bit WAV at the model's rate, of the "
        f"input's duration. Limits: {limits.max_upload_mb:g} MB per upload, {limits.max_seconds:g} s of audio, "
        f"{limits.workers} conversion(s) at a time and {limits.queue} waiting, {limits.timeout_s:g} s per conversion.",
        response_class=Response,
        responses={
            200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}, "description": "the converted WAV"},
            **{status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form_schema}}}},
    )
    async def convert(request: Request) -> Response:
        converted_request, converted = await service.convert(request)
        headers = {
            "Content-Disposition": f'attachment; filename="{_download_name(converted_request.filename, converted_request.direction)}"',
            "X-Audio-Seconds": f"{converted.seconds:.3f}",
            "X-Conversion-Seconds": f"{converted.wall_seconds:.3f}",
            "X-Model-Step": str(converted.step),
            "Cache-Control": "no-store",
        }
        return Response(converted.wav, media_type="audio/wav", headers=headers)

    @app.get("/healthz", response_model=Health, summary="Liveness and load")
    def health() -> dict:
        return {"status": "ok", "models": len(service.catalog.models), "loaded_models": len(service.cache), **service.queue.stats()}

    @app.get("/reports/{key}/{name:path}", include_in_schema=False)
    def report(key: str, name: str) -> FileResponse:
        path = service.catalog.report_file(key, name)
        media = "text/html; charset=utf-8" if name == "report.html" else "audio/wav"
        return FileResponse(path, media_type=media, headers=_REPORT_HEADERS)

    return app

"""The web app: a page and an HTTP API converting recordings with the trained models under one folder.

- :mod:`.server`: :func:`serve` (``cyclegan-vc serve``), uvicorn in one process;
- :mod:`.app`: :func:`create_app`, the FastAPI application (routes, error responses);
- :mod:`.service`: upload -> checked request -> conversion (``VoiceConverter.convert_file``, as
  ``convert``) -> WAV;
- :mod:`.catalog`: the models under the folder, by id; :mod:`.card`: what the page shows of each;
- :mod:`.cache`: loaded models in memory; :mod:`.queue`: the bounded conversion queue and timeouts;
- :mod:`.upload`: streamed, size-bounded multipart uploads into temporary folders;
- :mod:`.limits`: :class:`ServerLimits`; :mod:`.errors`, :mod:`.schema`: the API's JSON shapes;
- ``static/``: the page (HTML, script, style; no build step, nothing loaded from elsewhere).
"""

from .limits import ServerLimits

__all__ = ["ServerLimits", "create_app", "serve"]


def __getattr__(name: str):
    """``create_app`` and ``serve`` are imported on first use (FastAPI and torch are slow to import;
    ``cyclegan-vc serve --help`` reads only the limits' defaults)."""
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

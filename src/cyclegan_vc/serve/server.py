"""Running the server: :func:`serve`, the library function behind ``cyclegan-vc serve`` (uvicorn, one process)."""

from __future__ import annotations

import logging
import os

from ..utils import UserError
from .app import create_app
from .limits import ServerLimits

__all__ = ["serve", "url_of"]

log = logging.getLogger(__name__)


def url_of(host: str, port: int) -> str:
    """The page's address for a bound ``host`` and ``port`` (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    models: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServerLimits | None = None,
    device: str = "auto",
    announce=print,
) -> None:
    """Serve every model under ``models`` on ``host:port`` until interrupted (Ctrl-C or SIGTERM).

    One process: the models are loaded once into its memory and ``limits.workers`` threads convert
    (each with an equal share of the torch threads). ``host`` is the loopback interface unless told
    otherwise; ``0.0.0.0`` opens the server to the network, which has no authentication.
    ``announce`` gets the line with the page's address once the folder has been scanned.
    """
    import torch
    import uvicorn

    if not 0 <= port <= 65535:
        raise UserError(f"serve --port {port}: not a port number (0-65535)")
    limits = limits or ServerLimits()
    app = create_app(models, limits, device)
    torch.set_num_threads(max(1, torch.get_num_threads() // limits.workers))
    catalog = app.state.service.catalog
    if not catalog.models:
        log.warning("no trained model (run folder or exported model file) under %s", catalog.root)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this machine can use the server (it has no authentication)", host)
    announce(f"serving {len(catalog.models)} model(s) from {catalog.root} at {url_of(host, port)} "
             f"(API schema: {url_of(host, port)}openapi.json; Ctrl-C stops)")
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()

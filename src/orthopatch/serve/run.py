"""Build a server from its settings and run it under uvicorn until SIGTERM or Ctrl-C (in-flight requests drain)."""

from __future__ import annotations

import logging
import signal

import uvicorn
from fastapi import FastAPI

from orthopatch.config import validate
from orthopatch.serve.app import create_app
from orthopatch.serve.backends import ENGINES
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.metrics import Metrics

log = logging.getLogger("orthopatch.serve")


def build_app(cfg: ServeConfig) -> FastAPI:
    """Load what ``cfg`` serves (a bad patch stops here with a UserError) and wire the app around it."""
    validate(cfg)
    metrics = Metrics()
    backend = ENGINES[cfg.engine_name].load(cfg, metrics)
    return create_app(backend, cfg, metrics)


def serve(cfg: ServeConfig) -> int:
    app = build_app(cfg)
    models = ", ".join(app.state.model_ids)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=60))
    # uvicorn drains in-flight requests on SIGTERM, then raises the signal again with the handler found before it:
    # by then the work is done, so that second delivery must not turn a clean stop into an error exit
    signal.signal(signal.SIGTERM, lambda *_: None)
    log.info("serving %s on http://%s:%d (engine: %s%s)", models, cfg.host, cfg.port, cfg.engine_name,
             f", {cfg.upstream}" if cfg.upstream else "")
    server.run()
    log.info("stopped")
    return 0

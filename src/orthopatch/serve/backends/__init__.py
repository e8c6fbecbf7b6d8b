"""Serve backends, by engine name (``orthopatch serve --engine NAME``). A new engine is one module with a class
meeting :class:`~orthopatch.serve.backends.base.Backend` and one entry here."""

from __future__ import annotations

from orthopatch.serve.backends.base import Backend, Call, EventStream
from orthopatch.serve.backends.llamacpp import LlamaCppBackend
from orthopatch.serve.backends.local import LocalBackend
from orthopatch.serve.backends.upstream import UpstreamBackend

ENGINES: dict[str, type[Backend]] = {backend.engine: backend
                                     for backend in (LocalBackend, UpstreamBackend, LlamaCppBackend)}

__all__ = ["ENGINES", "Backend", "Call", "EventStream"]

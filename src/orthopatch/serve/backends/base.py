"""What a serve backend is: the contract the HTTP layer relies on, and the objects it hands a backend.

A backend turns a validated request (a :class:`Call`) into an :class:`EventStream`; responses and streams are
formatted in one place (serve/app.py) whatever engine produced the tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from orthopatch.serve.config import ServeConfig
from orthopatch.serve.jobs import Sampling
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet
from orthopatch.serve.protocol import ChatRequest, CompletionRequest


@dataclass
class Call:
    """One validated request, ready to run."""

    request_id: str
    model_id: str
    kind: str  # "chat" or "completion"
    request: ChatRequest | CompletionRequest  # validated; a backend forwards only the fields it knows from it
    prompt_ids: list[int]  # the prompt as this server's tokenizer and chat template make it (what gates read)
    sampling: Sampling
    stream: bool
    include_usage: bool


class EventStream:
    """The events of one call, in order; ``close`` tells the producer the client has gone."""

    def __init__(self, on_close: Callable[[], None]) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.finished = False
        self._on_close = on_close

    def emit(self, event: dict[str, Any]) -> None:
        """Thread-safe: the engine's thread hands events to the server's loop."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def next(self) -> dict[str, Any]:
        event = await self.queue.get()
        self.finished = event["type"] in ("end", "error")
        return event

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._on_close()


class Backend(Protocol):
    """The contract between the HTTP layer and an engine.

    - ``load(cfg, metrics)`` builds the backend from the server's settings; it loads what the engine needs (and
      raises :class:`~orthopatch.errors.UserError` for settings it cannot honour, before anything is served).
    - ``models`` is the :class:`ModelSet` the API lists, tokenizes with, and whose gates decide per request.
    - ``start()`` runs once, before the first request; ``await stop()`` once, after in-flight requests drained.
    - ``open(call)`` runs on the server's event loop and returns at once: it raises
      :class:`~orthopatch.serve.engine.QueueFull` when there is no room (the client gets 429), else the call's
      :class:`EventStream`. Its first event is ``{"type": "start", "route": ..., "prompt_tokens": N}`` (the route
      says which patch acts and what its gate decided) or ``{"type": "error", "status": S, "message": M}``; then
      ``{"type": "delta", "text": T}`` events; last one ``{"type": "end", "finish_reason": R,
      "completion_tokens": N}`` or an error. ``EventStream.close()`` tells the backend the client has gone.
    """

    engine: ClassVar[str]
    models: ModelSet

    @classmethod
    def load(cls, cfg: ServeConfig, metrics: Metrics) -> Backend: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def open(self, call: Call) -> EventStream: ...

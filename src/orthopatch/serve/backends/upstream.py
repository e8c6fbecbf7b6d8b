"""Engines behind this server: the gates decide here, an OpenAI-compatible engine generates.

:class:`Forwarding` is what such backends share: the route decided here, one request to the engine with the body
its :meth:`~Forwarding.request_body` builds (only fields that engine knows; a client's own extra fields, a ``lora``
or adapter field among them, never reach it), and the engine's stream relayed chunk by chunk.
:class:`UpstreamBackend` forwards to vLLM, SGLang, LoRAX or another orthopatch serving the patches' LoRA parts by
name (``--upstream URL``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import httpx
from starlette.concurrency import run_in_threadpool

from orthopatch.errors import UserError
from orthopatch.serve.backends.base import Call, EventStream
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.engine import QueueFull
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet, load_gates_only, parse_patch_arg

log = logging.getLogger("orthopatch.serve")
# the request fields an OpenAI-compatible engine is given (what the client sent of them); the rest stay here
FORWARDED = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop")


class GateBatcher:
    """Routes calls in batches: calls that arrive while a batch is being routed wait and are routed together next
    (one pass over the base's first layers for all their prompts, in a worker thread), so that many clients do not
    queue for the gate one prompt at a time."""

    def __init__(self, models: ModelSet, limit: int) -> None:
        self.models, self.limit = models, limit
        self.pending: list[tuple[Call, asyncio.Future]] = []
        self.running = False

    async def route(self, call: Call) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((call, future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[:self.limit], self.pending[self.limit:]
                batch = [(call, future) for call, future in batch if not future.cancelled()]  # clients gone
                if not batch:
                    continue
                try:
                    routes = await run_in_threadpool(self.models.route, [c.model_id for c, _ in batch],
                                                     [c.prompt_ids for c, _ in batch])
                except Exception as error:  # each waiting call gets it as its own error
                    routes = [error] * len(batch)
                for (_, future), route in zip(batch, routes, strict=True):
                    if not future.done():
                        future.set_exception(route) if isinstance(route, Exception) else future.set_result(route)
        finally:
            self.running = False


class Forwarding:
    """Decides with the gates here, then streams the call from an engine at ``self.url``."""

    def __init__(self, models: ModelSet, metrics: Metrics, cfg: ServeConfig, url: str,
                 headers: dict[str, str] | None = None) -> None:
        self.models, self.metrics = models, metrics
        self.url, self.headers = url.rstrip("/"), headers or {}
        self.timeout, self.limit = cfg.upstream_timeout, cfg.max_batch + cfg.max_queue
        self.in_flight = 0
        self.gates = GateBatcher(models, cfg.max_batch)
        self.client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.timeout)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def open(self, call: Call) -> EventStream:
        if self.in_flight >= self.limit:
            raise QueueFull
        self._count(+1)
        stream = EventStream(lambda: task.cancel())
        task = asyncio.get_running_loop().create_task(self._pump(call, stream))
        task.add_done_callback(lambda _: self._count(-1))
        return stream

    def _count(self, change: int) -> None:
        self.in_flight += change
        self.metrics.running.set(self.in_flight)

    def request_body(self, call: Call, route: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The engine's path and the JSON body for this call under this route."""
        raise NotImplementedError

    async def _pump(self, call: Call, stream: EventStream) -> None:
        try:
            route = await self.gates.route(call)
            self.metrics.record_route(route)
            stream.emit({"type": "start", "route": route, "prompt_tokens": len(call.prompt_ids)})
            path, body = self.request_body(call, route)
            async with self.client.stream("POST", self.url + path, json=body, headers=self.headers) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:500]
                    stream.emit({"type": "error", "status": response.status_code, "message": f"engine: {detail}"})
                    return
                await relay(response, stream, chat=path.endswith("/chat/completions"))
        except httpx.HTTPError as error:
            stream.emit({"type": "error", "status": 502, "message": f"engine unreachable ({type(error).__name__})"})
        except Exception as error:  # a failure here must answer the call, not leave it waiting
            log.exception("request %s failed before the engine answered", call.request_id)
            stream.emit({"type": "error", "status": 500, "message": f"the request failed ({type(error).__name__})"})


async def relay(response: httpx.Response, stream: EventStream, *, chat: bool) -> None:
    """An OpenAI-style SSE stream (of chat chunks, or of completion chunks), as delta events and one end event."""
    finish, completion_tokens, pieces = "stop", None, 0
    async for line in response.aiter_lines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        chunk = json.loads(line[5:])
        if "error" in chunk:
            stream.emit({"type": "error", "status": 502, "message": f"engine: {chunk['error']}"})
            return
        for choice in chunk.get("choices") or []:
            text = choice.get("delta", {}).get("content") if chat else choice.get("text")
            if text:
                pieces += 1
                stream.emit({"type": "delta", "text": text})
            finish = choice.get("finish_reason") or finish
        if chunk.get("usage"):
            completion_tokens = chunk["usage"].get("completion_tokens")
    stream.emit({"type": "end", "finish_reason": finish,
                 "completion_tokens": pieces if completion_tokens is None else completion_tokens})


class UpstreamBackend(Forwarding):
    """Forwards with ``model`` set to the patch (when its gate flags the prompt, or it has no gate) or the base."""

    engine: ClassVar[str] = "upstream"

    def __init__(self, models: ModelSet, metrics: Metrics, cfg: ServeConfig) -> None:
        headers = {"Authorization": f"Bearer {cfg.upstream_api_key}"} if cfg.upstream_api_key else {}
        super().__init__(models, metrics, cfg, cfg.upstream, headers)
        self.base = cfg.upstream_base or models.base_id

    @classmethod
    def load(cls, cfg: ServeConfig, metrics: Metrics) -> UpstreamBackend:
        for spec in cfg.patches:
            name, _, scale = parse_patch_arg(spec)
            if scale != 1.0:  # an OpenAI-compatible engine applies a LoRA adapter at the scale it was loaded with
                raise UserError(f"patch {name!r}: a scale ({scale:g}) cannot be passed to an upstream engine; "
                                "export the scaled patch (orthopatch patch apply PATCH@SCALE) and serve that",
                                field="--patch")
        return cls(load_gates_only(cfg), metrics, cfg)

    def request_body(self, call: Call, route: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        request = call.request
        body = {name: getattr(request, name) for name in FORWARDED
                if name in request.model_fields_set and hasattr(request, name)}
        body.update(model=route["patch"] if route["applied"] else self.base, stream=True,
                    stream_options={"include_usage": True})
        if call.kind == "chat":
            return "/v1/chat/completions", {**body, "messages": [{"role": m.role, "content": m.text()}
                                                                 for m in request.messages]}
        return "/v1/completions", {**body, "prompt": request.prompt}

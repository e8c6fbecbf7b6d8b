"""Where a request's tokens come from: this process's engine (local), or an OpenAI-compatible engine behind it
(upstream: vLLM, SGLang, LoRAX or another orthopatch serving the patches' LoRA parts by name).

Both give the HTTP layer the same thing, an :class:`EventStream` of ``start`` / ``delta`` / ``end`` / ``error``
events, so responses and streams are formatted in one place whatever produced them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from orthopatch.serve.config import ServeConfig
from orthopatch.serve.engine import Engine, QueueFull
from orthopatch.serve.jobs import Job, Sampling
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet


@dataclass
class Call:
    """One validated request, ready to run."""

    request_id: str
    model_id: str
    kind: str  # "chat" or "completion"
    body: dict[str, Any]  # the JSON the client sent (forwarded as it is in upstream mode)
    prompt_ids: list[int]
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


class LocalBackend:
    def __init__(self, models: ModelSet, metrics: Metrics, cfg: ServeConfig) -> None:
        self.models = models
        self.engine = Engine(models, metrics, max_batch=cfg.max_batch, max_queue=cfg.max_queue)
        tokenizer = models.tokenizer
        eos = {tokenizer.eos_token_id}
        configured = getattr(getattr(models.model, "generation_config", None), "eos_token_id", None)
        eos |= set(configured) if isinstance(configured, list) else {configured}
        self.eos_ids = frozenset(e for e in eos if e is not None)

    def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        await run_in_threadpool(self.engine.stop)

    def open(self, call: Call) -> EventStream:
        """Queue the call (QueueFull when there is no room); its events follow on the stream."""
        holder: dict[str, Job] = {}
        stream = EventStream(lambda: setattr(holder["job"], "cancelled", True))
        job = Job(call.request_id, call.model_id, call.prompt_ids, call.sampling, self.models.decode, self.eos_ids,
                  stream.emit)
        holder["job"] = job
        self.engine.submit(job)
        return stream


class UpstreamBackend:
    """Decides with the gates here, then forwards to ``upstream`` with ``model`` set to the patch (when its gate
    flags the prompt, or it has no gate) or to the base; the upstream's stream is read chunk by chunk."""

    def __init__(self, models: ModelSet, metrics: Metrics, cfg: ServeConfig) -> None:
        self.models, self.metrics = models, metrics
        self.url = cfg.upstream.rstrip("/")
        self.base = cfg.upstream_base or models.base_id
        self.headers = {"Authorization": f"Bearer {cfg.upstream_api_key}"} if cfg.upstream_api_key else {}
        self.timeout, self.limit = cfg.upstream_timeout, cfg.max_batch + cfg.max_queue
        self.in_flight = 0
        self.lock = threading.Lock()  # one gate computation at a time on the partial model
        self.client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.timeout)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def open(self, call: Call) -> EventStream:
        if self.in_flight >= self.limit:
            raise QueueFull
        self.in_flight += 1
        stream = EventStream(lambda: task.cancel())
        task = asyncio.get_running_loop().create_task(self._pump(call, stream))
        task.add_done_callback(lambda _: setattr(self, "in_flight", self.in_flight - 1))
        return stream

    def _route(self, call: Call) -> dict[str, Any]:
        with self.lock:
            return self.models.route([call.model_id], [call.prompt_ids])[0]

    async def _pump(self, call: Call, stream: EventStream) -> None:
        try:
            route = await run_in_threadpool(self._route, call)
            self.metrics.record_route(route)
            stream.emit({"type": "start", "route": route, "prompt_tokens": len(call.prompt_ids)})
            body = {**call.body, "model": route["patch"] if route["applied"] else self.base, "stream": True,
                    "stream_options": {"include_usage": True}}
            path = "/v1/chat/completions" if call.kind == "chat" else "/v1/completions"
            async with self.client.stream("POST", self.url + path, json=body, headers=self.headers) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:500]
                    stream.emit({"type": "error", "status": response.status_code, "message": f"upstream: {detail}"})
                    return
                await self._relay(call, response, stream)
        except httpx.HTTPError as error:
            stream.emit({"type": "error", "status": 502, "message": f"upstream unreachable ({type(error).__name__})"})

    @staticmethod
    async def _relay(call: Call, response: httpx.Response, stream: EventStream) -> None:
        finish, completion_tokens, pieces = "stop", None, 0
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                stream.emit({"type": "error", "status": 502, "message": f"upstream: {chunk['error']}"})
                return
            for choice in chunk.get("choices") or []:
                text = choice.get("delta", {}).get("content") if call.kind == "chat" else choice.get("text")
                if text:
                    pieces += 1
                    stream.emit({"type": "delta", "text": text})
                finish = choice.get("finish_reason") or finish
            if chunk.get("usage"):
                completion_tokens = chunk["usage"].get("completion_tokens")
        stream.emit({"type": "end", "finish_reason": finish,
                     "completion_tokens": pieces if completion_tokens is None else completion_tokens})

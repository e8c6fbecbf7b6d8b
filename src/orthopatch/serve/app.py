"""The HTTP layer: OpenAI-compatible routes on FastAPI, errors as OpenAI error objects, responses and streams.

Request text is never logged: a finished request logs one line with its id, model, token counts, the gate's
decision and its latency.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from jinja2 import TemplateError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from orthopatch.serve import protocol
from orthopatch.serve.backends import Backend, Call, EventStream
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.engine import QueueFull
from orthopatch.serve.jobs import Sampling
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.protocol import ChatRequest, CompletionRequest

log = logging.getLogger("orthopatch.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(protocol.error_body(self.message, kind=self.kind, param=self.param, code=self.code),
                            status_code=self.status, headers=self.headers)


def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON ({first.get('msg')})", code="json_invalid").response()
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return APIError(422, message, param=param, code=first.get("type")).response()


def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    return APIError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None,
                    headers=getattr(error, "headers", None)).response()


class Server:
    """The routes' shared state: the backend, the models it serves, metrics and the settings."""

    def __init__(self, backend: Backend, cfg: ServeConfig, metrics: Metrics) -> None:
        self.backend, self.models, self.cfg, self.metrics = backend, backend.models, cfg, metrics

    def check_key(self, request: Request) -> None:
        if self.cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.cfg.api_key}".encode()):
            raise APIError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key",
                           kind="authentication_error")

    def prompt_ids(self, kind: str, body: ChatRequest | CompletionRequest) -> list[int]:
        if kind == "completion":
            return self.models.encode(body.prompt, special_tokens=True)
        try:
            text = self.models.chat_text(body.conversation())
        except TemplateError as error:
            raise APIError(400, f"the chat template refused these messages: {error}", param="messages") from None
        return self.models.encode(text, special_tokens=False)

    def prepare(self, kind: str, body: ChatRequest | CompletionRequest) -> Call:
        if body.model not in self.models.ids:
            raise APIError(404, f"the model {body.model!r} does not exist (served: {', '.join(self.models.ids)})",
                           param="model", code="model_not_found")
        ids = self.prompt_ids(kind, body)
        context, asked = self.models.context_length, body.token_limit()
        limit = asked or self.cfg.default_max_tokens
        if context is not None:
            where = "messages" if kind == "chat" else "prompt"
            if len(ids) >= context:
                raise APIError(400, f"the prompt has {len(ids)} tokens; this model's context is {context} tokens",
                               param=where, code="context_length_exceeded")
            if asked and len(ids) + asked > context:
                raise APIError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({asked}) exceed this "
                               f"model's context of {context} tokens", param="max_tokens",
                               code="context_length_exceeded")
            limit = min(limit, context - len(ids))
        sampling = Sampling(limit, body.temperature, body.top_p, body.seed, tuple(body.stop or ()))
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return Call(prefix + uuid.uuid4().hex, body.model, kind, body, ids, sampling, body.stream,
                    body.include_usage())

    async def respond(self, call: Call) -> Response:
        arrived = time.perf_counter()
        try:
            events = self.backend.open(call)
        except QueueFull:
            self.metrics.requests.labels(call.model_id, "rejected").inc()
            raise APIError(429, "the server is at capacity; retry shortly", code="queue_full",
                           kind="rate_limit_error", headers={"Retry-After": "1"}) from None
        trace = Trace(self, call, arrived)
        first = await events.next()
        if first["type"] == "error":
            trace.done("error")
            raise APIError(first.get("status", 500), first["message"], kind="server_error")
        trace.start(first)
        if call.stream:
            return StreamingResponse(self.sse(call, first, events, trace), media_type="text/event-stream")
        text, end = [], first
        while end["type"] not in ("end", "error"):
            end = await events.next()
            if end["type"] == "delta":
                trace.text()
                text.append(end["text"])
        if end["type"] == "error":
            trace.done("error")
            raise APIError(end.get("status", 500), end["message"], kind="server_error")
        trace.done(end["finish_reason"], end["completion_tokens"])
        build = protocol.chat_response if call.kind == "chat" else protocol.completion_response
        return JSONResponse(build(call.request_id, call.model_id, "".join(text), end["finish_reason"],
                                  (len(call.prompt_ids), end["completion_tokens"]), first["route"]))

    async def sse(self, call: Call, first: dict[str, Any], events: EventStream, trace: Trace):
        created = int(time.time())
        chunk = Chunks(call, created)
        try:
            yield chunk.data(chunk.opening(first["route"]))
            while True:
                event = await events.next()
                if event["type"] == "delta":
                    trace.text()
                    yield chunk.data(chunk.text(event["text"]))
                elif event["type"] == "error":
                    trace.done("error")
                    yield chunk.data(protocol.error_body(event["message"], kind="server_error"))
                    break
                else:
                    trace.done(event["finish_reason"], event["completion_tokens"])
                    yield chunk.data(chunk.finish(event["finish_reason"]))
                    if call.include_usage:
                        yield chunk.data(chunk.usage(len(call.prompt_ids), event["completion_tokens"]))
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not events.finished:
                trace.done("cancelled")
            events.close()  # the client went away mid-stream: its row leaves the batch


class Chunks:
    """The stream's chunk objects for one call (chat deltas or completion texts)."""

    def __init__(self, call: Call, created: int) -> None:
        self.call, self.created = call, created
        self.chat = call.kind == "chat"

    def _make(self, **fields: Any) -> dict[str, Any]:
        maker = protocol.chat_chunk if self.chat else protocol.completion_chunk
        return maker(self.call.request_id, self.call.model_id, self.created, **fields)

    def opening(self, route: dict[str, Any]) -> dict[str, Any]:
        if self.chat:
            return self._make(delta={"role": "assistant", "content": ""}, orthopatch=route)
        return self._make(text="", orthopatch=route)

    def text(self, text: str) -> dict[str, Any]:
        return self._make(delta={"content": text}) if self.chat else self._make(text=text)

    def finish(self, reason: str) -> dict[str, Any]:
        return self._make(delta={}, finish=reason) if self.chat else self._make(text="", finish=reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return self._make(usage=protocol.usage(prompt_tokens, completion_tokens))

    @staticmethod
    def data(obj: dict[str, Any]) -> str:
        return f"data: {json.dumps(obj)}\n\n"


class Trace:
    """One request's metrics and its log line (ids, counts, decision, timing; never its text)."""

    def __init__(self, server: Server, call: Call, arrived: float) -> None:
        self.metrics, self.call, self.arrived = server.metrics, call, arrived
        self.route: dict[str, Any] | None = None
        self.first_text: float | None = None
        self.closed = False

    def start(self, event: dict[str, Any]) -> None:
        self.route = event["route"]

    def text(self) -> None:
        if self.first_text is None:
            self.first_text = time.perf_counter()
            self.metrics.first_token.labels(self.call.model_id).observe(self.first_text - self.arrived)

    def done(self, outcome: str, completion_tokens: int = 0) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = time.perf_counter() - self.arrived
        model = self.call.model_id
        self.metrics.requests.labels(model, "error" if outcome == "error" else "ok" if outcome in (
            "stop", "length") else outcome).inc()
        self.metrics.tokens.labels(model, "prompt").inc(len(self.call.prompt_ids))
        self.metrics.tokens.labels(model, "completion").inc(completion_tokens)
        self.metrics.latency.labels(model).observe(elapsed)
        gate = (self.route or {}).get("gate")
        decision = "-" if gate is None else f"{'flagged' if gate['flagged'] else 'passed'}({gate['score']:.3f})"
        log.info("request %s model=%s prompt_tokens=%d completion_tokens=%d gate=%s finish=%s latency=%.3fs",
                 self.call.request_id, model, len(self.call.prompt_ids), completion_tokens, decision, outcome,
                 elapsed)


def playground_html() -> str:
    return resources.files("orthopatch.serve").joinpath("playground.html").read_text(encoding="utf-8")


def create_app(backend: Backend, cfg: ServeConfig, metrics: Metrics) -> FastAPI:
    server = Server(backend, cfg, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        backend.start()
        yield
        await backend.stop()  # uvicorn has drained in-flight requests by now

    app = FastAPI(title="orthopatch serve", lifespan=lifespan, redoc_url=None)
    app.state.model_ids = server.models.ids
    app.add_exception_handler(APIError, lambda _r, e: e.response())
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    keyed = [Depends(server.check_key)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def playground() -> str:
        return playground_html()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": server.models.ids}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=keyed)
    def models() -> dict[str, Any]:
        return {"object": "list", "data": server.models.cards()}

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat(body: ChatRequest) -> Response:
        return await server.respond(server.prepare("chat", body))

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(body: CompletionRequest) -> Response:
        return await server.respond(server.prepare("completion", body))

    return app

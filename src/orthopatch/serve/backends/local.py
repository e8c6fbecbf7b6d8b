"""The torch engine: this process decodes the base and every patch together (serve/engine.py's batching loop)."""

from __future__ import annotations

from typing import ClassVar

from starlette.concurrency import run_in_threadpool

from orthopatch.serve.backends.base import Call, EventStream
from orthopatch.serve.config import ServeConfig
from orthopatch.serve.engine import Engine
from orthopatch.serve.jobs import Job
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet, load_local


class LocalBackend:
    engine: ClassVar[str] = "torch"

    def __init__(self, models: ModelSet, metrics: Metrics, cfg: ServeConfig) -> None:
        self.models = models
        self.engine_loop = Engine(models, metrics, max_batch=cfg.max_batch, max_queue=cfg.max_queue)
        tokenizer = models.tokenizer
        eos = {tokenizer.eos_token_id}
        configured = getattr(getattr(models.model, "generation_config", None), "eos_token_id", None)
        eos |= set(configured) if isinstance(configured, list) else {configured}
        self.eos_ids = frozenset(e for e in eos if e is not None)

    @classmethod
    def load(cls, cfg: ServeConfig, metrics: Metrics) -> LocalBackend:
        return cls(load_local(cfg), metrics, cfg)

    def start(self) -> None:
        self.engine_loop.start()

    async def stop(self) -> None:
        await run_in_threadpool(self.engine_loop.stop)

    def open(self, call: Call) -> EventStream:
        """Queue the call (QueueFull when there is no room); its events follow on the stream."""
        holder: dict[str, Job] = {}
        stream = EventStream(lambda: setattr(holder["job"], "cancelled", True))
        job = Job(call.request_id, call.model_id, call.prompt_ids, call.sampling, self.models.decode, self.eos_ids,
                  stream.emit)
        holder["job"] = job
        self.engine_loop.submit(job)
        return stream

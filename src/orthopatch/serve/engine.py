"""The batching engine: one thread decodes; requests queue while a batch runs and form the next batch.

A bounded queue holds waiting requests (``max_queue``; when it is full a request is refused at once, and the HTTP
layer answers 429). Each batch takes up to ``max_batch`` waiting jobs in arrival order, whatever model each asked
for: the model set routes every row (base, patch, gated patch) before the first token, and rows leave the batch as
they finish. A job cancelled while it waits (its client went away) is dropped without being decoded.
"""

from __future__ import annotations

import logging
import queue
import threading

from orthopatch.serve.decoding import decode
from orthopatch.serve.jobs import Job
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet

log = logging.getLogger("orthopatch.serve")


class QueueFull(Exception):
    """No room for another waiting request."""


class Engine:
    def __init__(self, models: ModelSet, metrics: Metrics, *, max_batch: int, max_queue: int) -> None:
        self.models, self.metrics, self.max_batch = models, metrics, max_batch
        self.waiting: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.metrics.watch_queue(self.waiting.qsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="orthopatch-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued or running, then stop the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        try:
            self.waiting.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def _serve(self) -> None:
        while not (self._stop.is_set() and self.waiting.empty()):
            try:
                batch = [self.waiting.get(timeout=0.05)]
            except queue.Empty:
                continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            batch = [job for job in batch if not job.cancelled]
            if batch:
                self._run(batch)

    def _run(self, jobs: list[Job]) -> None:
        self.metrics.batch_rows.observe(len(jobs))
        self.metrics.running.set(len(jobs))
        try:
            routes = self.models.route([job.model_id for job in jobs], [job.prompt_ids for job in jobs])
            for job, route in zip(jobs, routes, strict=True):
                self.metrics.record_route(route)
                job.start(route)
            decode(self.models.model, jobs, self.models.tokenizer.pad_token_id, self.models.masks())
        except Exception as error:  # one bad batch must not take the server down; its requests get an error
            log.exception("batch of %d failed", len(jobs))
            for job in jobs:
                if job.finish_reason is None:
                    job.fail(f"generation failed ({type(error).__name__})")
        finally:
            self.metrics.running.set(0)

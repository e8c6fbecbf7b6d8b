"""The batching engine: one thread decodes a running batch that waiting requests join between steps.

A bounded queue holds waiting requests (``max_queue``; when it is full a request is refused at once, and the HTTP
layer answers 429). Before each step, waiting jobs fill the batch's free rows (up to ``max_batch``) in arrival
order, whatever model each asked for: the model set routes each new row (base, patch, gated patch) before its first
token, the new rows are prefilled together and join the running ones, and rows leave as they finish. A job
cancelled while it waits (its client went away) is dropped without being decoded; one cancelled while decoding
leaves at the next step.
"""

from __future__ import annotations

import logging
import queue
import threading

from orthopatch.serve.decoding import Batch
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
        batch = Batch(self.models.model, self.models.tokenizer.pad_token_id, self.models.masks())
        while not (self._stop.is_set() and self.waiting.empty() and not batch):
            room = self.max_batch - len(batch) if batch.can_join() else 0
            new = [job for job in self._take(room, wait=not batch) if not job.cancelled]
            try:
                if new:
                    self._join(batch, new)
                if batch:
                    batch.step()
            except Exception as error:  # one bad batch must not take the server down; its requests get an error
                log.exception("a batch of %d rows failed", len(batch) + len(new))
                for job in batch.jobs + new:
                    if job.finish_reason is None:
                        job.fail(f"generation failed ({type(error).__name__})")
                batch = Batch(self.models.model, self.models.tokenizer.pad_token_id, self.models.masks())
            self.metrics.running.set(len(batch))

    def _take(self, room: int, wait: bool) -> list[Job]:
        """Up to ``room`` waiting jobs; with nothing running, wait a little for the first."""
        jobs: list[Job] = []
        while len(jobs) < room:
            try:
                jobs.append(self.waiting.get(timeout=0.05) if wait and not jobs else self.waiting.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _join(self, batch: Batch, jobs: list[Job]) -> None:
        routes = self.models.route([job.model_id for job in jobs], [job.prompt_ids for job in jobs])
        for job, route in zip(jobs, routes, strict=True):
            self.metrics.record_route(route)
            job.start(route)
        self.metrics.prefill_rows.observe(len(jobs))
        batch.join(jobs, self.models.flags(routes))

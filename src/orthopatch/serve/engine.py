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

from orthopatch.patches.gate import GateInputs
from orthopatch.serve.decoding import Batch
from orthopatch.serve.jobs import Job
from orthopatch.serve.metrics import Metrics
from orthopatch.serve.models import ModelSet

log = logging.getLogger("orthopatch.serve")
JOIN_WAIT_STEPS = 4  # the longest a waiting request is held back to be prefilled with others


class QueueFull(Exception):
    """No room for another waiting request."""


class Engine:
    def __init__(self, models: ModelSet, metrics: Metrics, *, max_batch: int, max_queue: int) -> None:
        self.models, self.metrics, self.max_batch = models, metrics, max_batch
        self.waiting: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.pending = 0  # taken from the queue by the engine's thread, not yet prefilled
        self.metrics.watch_queue(lambda: self.waiting.qsize() + self.pending)
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
        pending: list[Job] = []  # taken from the queue, not yet prefilled
        waited = 0  # steps the oldest pending job has waited
        while not (self._stop.is_set() and self.waiting.empty() and not batch and not pending):
            room = self.max_batch - len(batch) - len(pending) if batch.can_join() else 0
            pending += self._take(room, wait=not batch and not pending)
            pending = [job for job in pending if not job.cancelled]
            self.pending = len(pending)
            try:
                if pending and self._join_now(batch, len(pending), waited):
                    self._join(batch, pending)
                    pending, waited = [], 0
                if batch:
                    batch.step()
                    waited += 1 if pending else 0
            except Exception as error:  # one bad batch must not take the server down; its requests get an error
                log.exception("a batch of %d rows failed", len(batch) + len(pending))
                for job in batch.jobs + pending:
                    if job.finish_reason is None:
                        job.fail(f"generation failed ({type(error).__name__})")
                batch, pending = Batch(self.models.model, self.models.tokenizer.pad_token_id, self.models.masks()), []
            self.metrics.running.set(len(batch))

    def _join_now(self, batch: Batch, pending: int, waited: int) -> bool:
        """Prefill the pending jobs now, or let them gather for a few steps? Every forward pass reads all the
        weights once (most of a decoding step's time on a CPU), so jobs that arrive one by one are prefilled in
        groups: at once when nothing is running, when they fill the free rows or a quarter of the batch, or when
        the oldest has waited JOIN_WAIT_STEPS steps."""
        free = self.max_batch - len(batch)
        return not batch or pending >= min(free, max(1, self.max_batch // 4)) or waited >= JOIN_WAIT_STEPS

    def _take(self, room: int, wait: bool) -> list[Job]:
        """Up to ``room`` waiting jobs; with nothing running or pending, wait a little for the first."""
        jobs: list[Job] = []
        while len(jobs) < room:
            try:
                jobs.append(self.waiting.get(timeout=0.05) if wait and not jobs else self.waiting.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _join(self, batch: Batch, jobs: list[Job]) -> None:
        """Prefill ``jobs`` and add them to the batch. Rows for a gated patch run their first pass on the base and
        their gate decides from that pass's hidden states, so a prompt the gate passes costs nothing extra; the
        few it flags are prefilled again with the patch on."""
        wanted = [job.model_id for job in jobs]
        first = batch.prefill(jobs, self.models.flags(self.models.provisional(wanted)), self.models.gate_layers(wanted))
        routes = self.models.route_from_features(wanted, GateInputs(first.input_ids, first.attention, first.features))
        for job, route in zip(jobs, routes, strict=True):
            self.metrics.record_route(route)
            job.start(route)
        redo = [i for i, route in enumerate(routes) if route["gate"] is not None and route["applied"]]
        self.metrics.prefill_rows.observe(len(jobs))
        if not redo:
            batch.add(first)
            return
        keep = [i for i in range(len(jobs)) if i not in set(redo)]
        if keep:
            batch.add(first.select(keep))
        batch.add(batch.prefill([jobs[i] for i in redo], self.models.flags([routes[i] for i in redo])))

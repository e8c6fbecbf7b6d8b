"""Prometheus metrics of one server (its own registry, so two servers in one process do not mix counts)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("orthopatch_requests", "Requests by model and outcome", ["model", "outcome"],
                                registry=r)
        self.tokens = Counter("orthopatch_tokens", "Prompt and completion tokens by model", ["model", "kind"],
                              registry=r)
        self.gate = Counter("orthopatch_gate_decisions", "Gate decisions per gated patch", ["patch", "decision"],
                            registry=r)
        self.queue = Gauge("orthopatch_queue_length", "Requests waiting for a batch", registry=r)
        self.running = Gauge("orthopatch_running_requests", "Rows in the running batch", registry=r)
        self.prefill_rows = Histogram("orthopatch_prefill_rows", "Waiting requests prefilled together when they "
                                      "join the running batch", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.latency = Histogram("orthopatch_request_latency_seconds", "Time from arrival to the last token",
                                 ["model"], registry=r, buckets=LATENCY_BUCKETS)
        self.first_token = Histogram("orthopatch_time_to_first_token_seconds", "Time from arrival to the first "
                                     "text", ["model"], registry=r, buckets=LATENCY_BUCKETS)

    def watch_queue(self, length: Callable[[], int]) -> None:
        self.queue.set_function(length)

    def record_route(self, route: dict) -> None:
        if route.get("gate") is not None:
            self.gate.labels(route["patch"], "flagged" if route["gate"]["flagged"] else "passed").inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)

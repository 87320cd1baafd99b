"""Prometheus metrics, in one registry per app (two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The gateway's counters; `render()` is the `/metrics` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("stillwatch_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("stillwatch_request_seconds", "Time to the last byte of a response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("stillwatch_requests_in_flight", "Requests being served", registry=r)
        self.decisions = Counter("stillwatch_guard_decisions", "What the guard decided", ["decision"], registry=r)
        self.tokens = Counter("stillwatch_tokens", "Tokens served", ["kind"], registry=r)
        self.batch_sequences = Histogram("stillwatch_batch_sequences", "Sequences per local model call",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = Histogram("stillwatch_batch_seconds", "Seconds per local model call",
                                       buckets=LATENCY_BUCKETS, registry=r)

    def observe_batch(self, _key: object, sequences: int, seconds: float) -> None:
        """Batcher callback."""
        self.batch_sequences.observe(sequences)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

"""Prometheus metrics, in one registry per app (two apps in one process never share counters)."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

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
        self.refusals_unaudited = Counter("stillwatch_refusals_unaudited", "Refused requests beyond a key's "
                                          "per-minute audit budget (counted here only)", registry=r)
        self.tokens = Counter("stillwatch_tokens", "Tokens served", ["kind"], registry=r)
        self.batch_sequences = Histogram("stillwatch_batch_sequences", "Sequences per local model call",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_seconds = Histogram("stillwatch_batch_seconds", "Seconds per local model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("stillwatch_time_to_first_token_seconds", "Time from a request's arrival to "
                                     "its first generated text (streams) or its whole answer (non-streams)",
                                     ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.audit_commit = Histogram("stillwatch_audit_commit_seconds", "Time from queueing an audit record to "
                                      "the commit that holds it", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("stillwatch_queue_depth", "Items waiting: audit records for the writer, "
                                 "requests for the local model's batcher", ["queue"], registry=r)
        self._depths: dict[str, Callable[[], int]] = {}

    def watch_queue(self, name: str, depth: Callable[[], int]) -> None:
        """Report `depth()` as stillwatch_queue_depth{queue=name} at every scrape."""
        self._depths[name] = depth
        self.queue_depth.labels(name).set_function(lambda: float(self._depths[name]()))

    def watch_detector_actions(self, counts: Callable[[], dict[str, int]], every_s: float = 5.0) -> None:
        """Export stillwatch_detector_actions_total{action}: what the detector has applied (read from the
        account actions it recorded, at most once per `every_s`: a scrape never waits on more than one query)."""
        cache: dict[str, object] = {"at": 0.0, "counts": {}}

        class Collector:
            def describe(self):  # type: ignore[no-untyped-def]
                # Registration asks for this, not collect(): no query before the first scrape.
                yield CounterMetricFamily("stillwatch_detector_actions", "Actions the online detector applied",
                                          labels=["action"])

            def collect(self):  # type: ignore[no-untyped-def]
                if time.monotonic() - float(cache["at"]) > every_s:  # type: ignore[arg-type]
                    try:
                        cache["counts"] = counts()
                    except Exception:  # noqa: BLE001 - a database hiccup must not break /metrics
                        pass
                    cache["at"] = time.monotonic()
                family = CounterMetricFamily("stillwatch_detector_actions", "Actions the online detector applied",
                                             labels=["action"])
                for action, n in sorted(cache["counts"].items()):  # type: ignore[union-attr]
                    family.add_metric([action], n)
                yield family

        self.registry.register(Collector())

    def observe_batch(self, _key: object, sequences: int, seconds: float) -> None:
        """Batcher callback."""
        self.batch_sequences.observe(sequences)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

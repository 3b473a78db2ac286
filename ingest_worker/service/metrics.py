"""Prometheus metrics of the worker.

Counters and histograms are updated where the work happens. Consumer lag and
the outbox backlog are gauges that the HTTP endpoint refreshes before a scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 1 ms to about a minute: a batch or an event delayed by a retry.
_LATENCY_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class WorkerMetrics:
    """The metrics of one worker process, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "ingest_records_consumed",
            "Records fetched from the input and retry topics",
            ["topic"],
            registry=r,
        )
        self.stored = Counter("ingest_events_stored", "Events stored", registry=r)
        self.duplicates = Counter(
            "ingest_duplicates",
            "Records skipped as duplicates of stored events",
            registry=r,
        )
        self.dead_letters = Counter(
            "ingest_dead_letters",
            "Records sent to the dead-letter topic",
            ["code"],
            registry=r,
        )
        self.retries = Counter(
            "ingest_retries", "Records sent to the retry topic", ["code"], registry=r
        )
        self.batch_seconds = Histogram(
            "ingest_batch_duration_seconds",
            "Time from fetch to offset commit of one batch",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "ingest_end_to_end_latency_seconds",
            "Time from the record's broker timestamp to its offset commit",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.lag = Gauge(
            "ingest_consumer_lag",
            "Records not yet committed, by partition",
            ["topic", "partition"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "ingest_outbox_backlog", "Normalized events not yet published", registry=r
        )
        self.ready = Gauge(
            "ingest_ready", "1 when the database and broker are reachable", registry=r
        )

    def batch_settled(self, outcomes: Iterable[Any], duration_s: float) -> None:
        now_ms = time.time() * 1000
        self.batch_seconds.observe(duration_s)
        for outcome in outcomes:
            record = outcome.record
            self.consumed.labels(record.topic).inc()
            if outcome.verdict == "stored":
                self.stored.inc()
            elif outcome.verdict == "duplicate":
                self.duplicates.inc()
            timestamp = record.timestamp
            self.latency_seconds.observe(max(0.0, (now_ms - timestamp) / 1000))

    def failure_routed(self, retried: bool, code: str) -> None:
        (self.retries if retried else self.dead_letters).labels(code).inc()

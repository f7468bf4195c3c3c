"""Prometheus metrics of the queue workers.

A prefork worker scores in child processes, so the metrics use prometheus-client's
multiprocess mode: `prepare()` (main process, before the pool forks) points
PROMETHEUS_MULTIPROC_DIR at a fresh folder, children record into it, and `serve()` (main
process) exposes the sum over children on `worker_metrics_port`, plus the queue depth read
from Redis at scrape time. prometheus_client is imported only after `prepare()`, because it
picks its storage mode once, at import.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from moderator.settings import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"
BATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def prepare() -> str:
    """Use a fresh multiprocess folder unless the operator chose one (then they keep it clean)."""
    if not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix="moderator-metrics-")
    return os.environ[ENV]


@dataclass(frozen=True)
class WorkerMetrics:
    items: Any  # Counter[status]
    errors: Any  # Counter[reason]
    batch_seconds: Any  # Histogram
    batches: Any  # Counter[outcome]


@cache
def worker_metrics() -> WorkerMetrics:
    from prometheus_client import Counter, Histogram

    return WorkerMetrics(
        items=Counter("moderator_worker_items", "Items handled by workers, by outcome", ["status"]),
        errors=Counter(
            "moderator_worker_item_errors", "Item errors by reason (decode failure, read, quarantine)", ["reason"]
        ),
        batch_seconds=Histogram("moderator_worker_batch_seconds", "Seconds per queued batch", buckets=BATCH_BUCKETS),
        batches=Counter(
            "moderator_worker_batches", "Queued batches by outcome (ok, retry, failed, split, quarantined)", ["outcome"]
        ),
    )


def record_batch(scanned: int, unchanged: int, skipped: int, errors_by_reason: dict[str, int], seconds: float) -> None:
    m = worker_metrics()
    for status, n in (("scanned", scanned), ("unchanged", unchanged), ("skipped", skipped)):
        if n:
            m.items.labels(status).inc(n)
    for reason, n in errors_by_reason.items():
        m.items.labels("error").inc(n)
        m.errors.labels(reason).inc(n)
    m.batch_seconds.observe(seconds)
    m.batches.labels("ok").inc()


def record_outcome(outcome: str) -> None:
    worker_metrics().batches.labels(outcome).inc()


class QueueDepthCollector:
    """moderator_queue_depth / moderator_queue_unacked: read from Redis when scraped."""

    def __init__(self, settings: Settings) -> None:
        self.broker_url = settings.broker_url
        self.queue = settings.queue_name

    def collect(self) -> Iterator[Any]:
        import redis
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("moderator_queue_depth", "Batches waiting in the queue", labels=["queue"])
        unacked = GaugeMetricFamily("moderator_queue_unacked", "Batches taken by workers, not yet acknowledged")
        try:
            client = redis.Redis.from_url(self.broker_url, socket_timeout=2, socket_connect_timeout=2)
            depth.add_metric([self.queue], client.llen(self.queue))
            unacked.add_metric([], client.hlen("unacked"))
            client.close()
        except redis.RedisError:
            return  # broker down: no sample rather than a wrong zero
        yield depth
        yield unacked


def serve(settings: Settings) -> int:
    """Serve the children's summed metrics and the queue depth; returns the port (0: off)."""
    port = settings.worker_metrics_port
    if not port:
        return 0
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=prepare())
    registry.register(QueueDepthCollector(settings))  # type: ignore[arg-type]
    start_http_server(port, registry=registry)
    return port

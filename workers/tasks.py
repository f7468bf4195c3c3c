"""The one task: score a batch of item references with moderator.pipeline and count it in the job.

Delivery rules, in the order they apply:
- every delivery of a batch increments a Redis counter keyed by task id (and retry number):
  Celery's `redelivered` flag is not reliable on Redis, a counter is;
- after `max_deliveries` deliveries that killed the worker, a batch is split into one-item
  tasks; a single item that killed it that often is quarantined (stored as an item error);
- transient failures (database, S3, broker) are retried with exponential backoff; bad images
  are not failures at all (the pipeline records them as item errors);
- a batch is counted in its job once (a Redis marker per task id), after its results are
  stored, so a redelivered or retried batch never counts twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from moderator import metrics
from workers import runtime
from workers.celery_app import TASK_NAME, app, retry_countdown
from workers.delivery import Deliveries
from workers.errors import is_transient

log = logging.getLogger("moderator.worker")


@app.task(name=TASK_NAME, bind=True)
def scan_batch(self: Task, job_id: str, items: list[dict[str, Any]], policies: list[str] | None = None) -> None:
    settings = runtime.settings()
    request = self.request
    task_id = str(request.id)
    deliveries = Deliveries.for_settings(settings)
    delivery = deliveries.started(task_id, request.retries)
    start = time.perf_counter()
    try:
        if delivery > settings.max_deliveries:
            if len(items) > 1:
                _split(self, task_id, job_id, items, policies or [], delivery - 1)
                return
            _quarantine(job_id, items[0], delivery - 1, deliveries, task_id)
            return
        summary = runtime.scan(job_id, items, policies or [])
        seconds = time.perf_counter() - start
        if deliveries.first_count(task_id):
            runtime.store().advance_job(
                job_id, done=summary.scanned + summary.unchanged, errors=summary.errors, skipped=summary.skipped
            )
            deliveries.mark_counted(task_id)
    except SoftTimeLimitExceeded:
        _fail(
            job_id,
            f"a batch of {len(items)} items ran past its time limit: lower MODERATOR_QUEUE_BATCH_SIZE "
            "or raise MODERATOR_VISIBILITY_TIMEOUT",
        )
        raise
    except Exception as exc:
        if not is_transient(exc) and not isinstance(exc, runtime.TransientReadError):
            _fail(job_id, f"batch failed: {type(exc).__name__}: {exc}")
            raise
        runtime.reset_store()
        if request.retries >= settings.task_max_retries:
            _fail(job_id, f"batch gave up after {request.retries} retries: {type(exc).__name__}: {exc}")
            raise
        metrics.record_outcome("retry")
        countdown = retry_countdown(settings, request.retries)
        log.warning(
            "transient error, retry %d in %.0f s: %s: %s", request.retries + 1, countdown, type(exc).__name__, exc
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.task_max_retries) from None
    metrics.record_batch(summary.scanned, summary.unchanged, summary.skipped, dict(summary.errors_by_reason), seconds)
    runtime.log_batch(
        job=job_id,
        task=task_id,
        delivery=delivery,
        items=len(items),
        seconds=round(seconds, 3),
        scanned=summary.scanned,
        unchanged=summary.unchanged,
        errors=summary.errors,
        skipped=summary.skipped,
        errors_by_reason=dict(summary.errors_by_reason),
    )


def _split(task: Task, task_id: str, job_id: str, items: list[dict[str, Any]], policies: list[str], died: int) -> None:
    """One task per item (ids derived from this one, so a repeated split sends the same tasks)."""
    queue = (task.request.delivery_info or {}).get("routing_key") or runtime.settings().queue_name
    for i, ref in enumerate(items):
        scan_batch.apply_async(
            kwargs={"job_id": job_id, "items": [ref], "policies": policies}, task_id=f"{task_id}.{i}", queue=queue
        )
    metrics.record_outcome("split")
    runtime.log_batch(job=job_id, task=task_id, items=len(items), split=True, worker_deaths=died)


def _quarantine(job_id: str, ref: dict[str, Any], died: int, deliveries: Deliveries, task_id: str) -> None:
    from moderator.queue import ItemRef
    from moderator.store import ItemRecord
    from moderator.types import ItemStatus

    item = ItemRef.model_validate(ref)
    message = f"quarantined: worker died {died} times on this item"
    record = ItemRecord(
        uri=item.uri,
        sha256=None,
        size=item.size,
        fingerprint=item.fingerprint,
        status=ItemStatus.ERROR,
        error=message,
        meta=dict(item.meta),
        job_id=job_id,
    )
    store = runtime.store()
    store.save_items([record])
    if deliveries.first_count(task_id):
        store.advance_job(job_id, errors=1)
        deliveries.mark_counted(task_id)
    metrics.record_outcome("quarantined")
    metrics.worker_metrics().errors.labels("quarantined").inc()
    log.error("%s: %s", message, item.uri)
    runtime.log_batch(job=job_id, task=task_id, items=1, errors=1, quarantined=item.uri)


def _fail(job_id: str, message: str) -> None:
    """Mark the job failed (best effort: the database may be what failed)."""
    from moderator.store import JobState

    metrics.record_outcome("failed")
    log.error("job %s: %s", job_id, message)
    try:
        runtime.store().update_job(job_id, state=JobState.FAILED, message=message)
    except Exception as exc:
        log.error("could not mark job %s failed: %s", job_id, exc)

"""The one task: score a batch of item references with moderator.pipeline and count it in the job.

Delivery rules, in the order they apply (the batch ledger, store.batches, is the record):
- every delivery is counted in the ledger, per retry number (Celery's `redelivered` flag is not
  reliable on Redis; a counter in the database survives a broker restart); a copy of a batch
  that is already recorded (redelivered after a lost ack, or sent again by the repair) is
  dropped without scoring anything;
- after `max_deliveries` deliveries that killed the worker, or a batch that raised or ran past
  its time limit, a batch is split into one-item tasks; a single item that killed the worker
  that often is quarantined, one that raised or timed out is stored as that item's error: in
  every case the item gets a record and the job goes on;
- transient failures (database, S3, broker) are retried with exponential backoff; the message
  is acknowledged only once its retry (or its split) is published, and when that cannot be
  done (the broker is down) it stays unacknowledged and comes back;
- a batch is counted in its job once, in the same transaction that marks it done;
- the job fails only when no policy can run in this worker, or a batch gave up after its retries.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from moderator import metrics
from moderator.queue import publish, retry_countdown
from moderator.store import BatchState, JobBatches, NewBatch
from workers import runtime
from workers.celery_app import TASK_NAME, app
from workers.errors import is_transient

log = logging.getLogger("moderator.worker")


@app.task(name=TASK_NAME, bind=True)
def scan_batch(self: Task, job_id: str, items: list[dict[str, Any]], policies: list[str] | None = None) -> None:
    settings = runtime.settings()
    request = self.request
    task_id = str(request.id)
    queue = (request.delivery_info or {}).get("routing_key") or settings.queue_name
    batch = NewBatch(task_id, job_id, queue, items)
    start = time.perf_counter()
    try:
        ledger = JobBatches(runtime.store())
        delivery = ledger.begin(batch, request.retries)
        if delivery.state is BatchState.DONE:
            # A copy (redelivered after a lost ack, or sent again by the repair): its items are stored.
            runtime.log_batch(job=job_id, task=task_id, items=len(items), unchanged=len(items), already_recorded=True)
            return
        if delivery.state is BatchState.SPLIT:
            _send_children(self, ledger, batch, policies or [], died=0)
            return
        if delivery.deliveries > settings.max_deliveries:
            died = delivery.deliveries - 1
            if len(items) > 1:
                _send_children(self, ledger, batch, policies or [], died=died)
            else:
                _record_item_error(ledger, batch, f"quarantined: worker died {died} times on this item", "quarantined")
            return
        summary = runtime.scan(job_id, items, policies or [])
        not_run = {s.policy: s.reason for s in summary.policies_not_run}
        ledger.finish(
            task_id,
            job_id,
            done=summary.scanned + summary.unchanged,
            errors=summary.errors,
            skipped=summary.skipped,
            not_run=not_run,
        )
    except Reject:
        raise
    except runtime.PoliciesUnavailable as exc:
        _fail(job_id, task_id, str(exc))
        return
    except SoftTimeLimitExceeded:
        _cannot_finish(self, batch, policies or [], "ran past the task time limit (MODERATOR_VISIBILITY_TIMEOUT)")
        return
    except Exception as exc:
        if not is_transient(exc) and not isinstance(exc, runtime.TransientReadError):
            _cannot_finish(self, batch, policies or [], f"{type(exc).__name__}: {exc}")
            return
        _retry(self, job_id, task_id, exc)
    seconds = time.perf_counter() - start
    metrics.record_batch(summary.scanned, summary.unchanged, summary.skipped, dict(summary.errors_by_reason), seconds)
    runtime.log_batch(
        job=job_id,
        task=task_id,
        delivery=delivery.deliveries,
        items=len(items),
        seconds=round(seconds, 3),
        scanned=summary.scanned,
        unchanged=summary.unchanged,
        errors=summary.errors,
        skipped=summary.skipped,
        errors_by_reason=dict(summary.errors_by_reason),
        **({"policies_not_run": not_run} if not_run else {}),
    )


def _retry(task: Task, job_id: str, task_id: str, exc: Exception) -> None:
    """Publish the retry, then let Celery acknowledge this delivery; if the retry cannot be published,
    this delivery is not acknowledged (it is requeued, or restored after the visibility timeout)."""
    settings = runtime.settings()
    retries = task.request.retries
    runtime.reset_store()
    if retries >= settings.task_max_retries:
        _fail(job_id, task_id, f"batch gave up after {retries} retries: {type(exc).__name__}: {exc}")
        raise exc
    metrics.record_outcome("retry")
    countdown = retry_countdown(settings, retries)
    log.warning("transient error, retry %d in %.0f s: %s: %s", retries + 1, countdown, type(exc).__name__, exc)
    try:
        raise task.retry(exc=exc, countdown=countdown, max_retries=settings.task_max_retries) from None
    except Reject as rejected:  # Celery's answer when the retry could not be published
        log.warning("could not publish the retry (%s): the batch stays queued and comes back", rejected.reason)
        try:
            JobBatches(runtime.store()).release(task_id)  # this delivery did not kill the worker
        except Exception:
            runtime.reset_store()
        raise Reject(rejected.reason, requeue=True) from None


def _cannot_finish(task: Task, batch: NewBatch, policies: list[str], why: str) -> None:
    """A batch that raised or ran too long: its items are tried one by one; one item is stored as an error."""
    ledger = JobBatches(runtime.store())
    if len(batch.items) > 1:
        log.error("batch %s of %d items %s: its items are tried one by one", batch.id, len(batch.items), why)
        _send_children(task, ledger, batch, policies, died=0)
    else:
        _record_item_error(ledger, batch, f"could not be scored: {why}", "batch_failed")


def _send_children(task: Task, ledger: JobBatches, batch: NewBatch, policies: list[str], *, died: int) -> None:
    """One task per item ("<id>.<n>"), recorded in the ledger before they are sent; this delivery is
    acknowledged only once they are all published."""
    children = ledger.split(batch.id, batch.job_id, batch.queue, batch.items)
    try:
        with app.producer_or_acquire() as producer:
            for child in children:
                publish(app, child, policies, producer)
    except Exception as exc:
        log.warning("could not publish the split of %s (%s): the batch stays queued and comes back", batch.id, exc)
        raise Reject(exc, requeue=True) from None
    metrics.record_outcome("split")
    runtime.log_batch(job=batch.job_id, task=batch.id, items=len(batch.items), split=True, worker_deaths=died)


def _record_item_error(ledger: JobBatches, batch: NewBatch, message: str, reason: str) -> None:
    """Store the batch's one item as an error and count it: the item has a record, the job goes on."""
    from moderator.queue import ItemRef
    from moderator.store import ItemRecord
    from moderator.types import ItemStatus

    item = ItemRef.model_validate(batch.items[0])
    record = ItemRecord(
        uri=item.uri,
        sha256=None,
        size=item.size,
        fingerprint=item.fingerprint,
        status=ItemStatus.ERROR,
        error=message,
        error_reason=reason,
        meta=dict(item.meta),
        job_id=batch.job_id,
    )
    runtime.store().save_items([record])
    ledger.finish(batch.id, batch.job_id, errors=1)
    metrics.record_outcome(reason)
    metrics.worker_metrics().errors.labels(reason).inc()
    log.error("%s: %s", message, item.uri)
    runtime.log_batch(job=batch.job_id, task=batch.id, items=1, errors=1, **{reason: item.uri})


def _fail(job_id: str, task_id: str, message: str) -> None:
    """Mark the batch and its job failed (best effort: the database may be what failed)."""
    metrics.record_outcome("failed")
    log.error("job %s: %s", job_id, message)
    try:
        JobBatches(runtime.store()).fail(task_id, job_id, message)
    except Exception as exc:
        log.error("could not mark job %s failed: %s", job_id, exc)

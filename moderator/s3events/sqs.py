"""Long-poll an SQS queue fed by S3 event notifications (directly or through SNS).

A message is deleted only after its events were acted upon. Malformed messages
are logged and left alone: after the queue's maxReceiveCount its redrive policy
moves them to the dead-letter queue.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from moderator.s3events.guard import allowed
from moderator.s3events.handler import EventHandler, EventStore, Submit, store_for
from moderator.s3events.parse import MalformedEvent, S3Event, parse_notification
from moderator.settings import Settings
from moderator.sources.s3 import client

log = logging.getLogger(__name__)
SQS_BATCH = 10  # the most SQS returns per receive
RETRY_PAUSE_S = 5.0


@dataclass
class ListenStats:
    received: int = 0
    malformed: int = 0
    submitted: int = 0  # object uris enqueued
    deleted: int = 0  # objects marked deleted
    dropped: int = 0  # duplicate or stale events
    refused: int = 0  # events outside s3_event_allow (their messages are deleted)
    failed_batches: int = 0  # batches whose action failed: left for redelivery


def listen_sqs(
    queue_url: str,
    settings: Settings,
    submit: Submit,
    *,
    max_messages: int | None = None,
    wait_seconds: int = 20,
    stop: threading.Event | None = None,
    store: EventStore | None = None,
) -> ListenStats:
    """Poll until `stop` is set or `max_messages` were received; returns what was done."""
    sqs = client("sqs", settings)
    handler = EventHandler(store if store is not None else store_for(settings), submit)
    stop = stop or threading.Event()
    stats = ListenStats()
    while not stop.is_set() and (max_messages is None or stats.received < max_messages):
        want = SQS_BATCH if max_messages is None else min(SQS_BATCH, max_messages - stats.received)
        response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=want, WaitTimeSeconds=wait_seconds)
        messages = response.get("Messages", [])
        stats.received += len(messages)
        if messages and not handle_batch(sqs, queue_url, messages, handler, stats, settings):
            stop.wait(RETRY_PAUSE_S)  # e.g. the broker is down: do not spin
    return stats


def handle_batch(
    sqs: Any,
    queue_url: str,
    messages: list[dict[str, Any]],
    handler: EventHandler,
    stats: ListenStats,
    settings: Settings | None = None,
) -> bool:
    """Act on one received batch; False when the action failed (nothing deleted)."""
    events: list[S3Event] = []
    done: list[dict[str, Any]] = []
    for message in messages:
        try:
            events.extend(parse_notification(message["Body"]))
        except MalformedEvent as exc:
            stats.malformed += 1
            log.warning(
                "SQS message %s is not an S3 event, left for the dead-letter queue: %s", message["MessageId"], exc
            )
            continue
        done.append(message)
    try:
        outcome = handler.handle(_allowed(events, settings, stats))
    except Exception:
        stats.failed_batches += 1
        log.exception("acting on %d S3 events failed; their messages will be delivered again", len(events))
        return False
    stats.submitted += len(outcome.submitted)
    stats.deleted += len(outcome.deleted)
    stats.dropped += outcome.dropped
    if outcome.job_id is not None:
        log.info("enqueued %d objects as job %s", len(outcome.submitted), outcome.job_id)
    if done:
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)]
        result = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        for failure in result.get("Failed", []):
            # Harmless: redelivered, then dropped as a duplicate by its sequencer.
            log.warning("could not delete SQS message %s: %s", failure.get("Id"), failure.get("Message"))
    return True


def _allowed(events: list[S3Event], settings: Settings | None, stats: ListenStats) -> list[S3Event]:
    """The events the operator's s3_event_allow lets through (the webhook obeys the same guard)."""
    if settings is None:
        return events
    kept = [e for e in events if allowed(e, settings)]
    if len(kept) < len(events):
        stats.refused += len(events) - len(kept)
        log.warning("refused %d S3 events outside s3_event_allow", len(events) - len(kept))
    return kept

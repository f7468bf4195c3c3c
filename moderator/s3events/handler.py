"""Acting on S3 events, shared by the SQS listener and the webhook.

Created objects are submitted for scanning (by uri, never bytes), removed ones are
marked deleted in the store; duplicates and out-of-order events are dropped by
their sequencer (ordering). The ordering state is written only after the action
succeeded, so a failed submit leaves the event to be delivered again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine

from moderator.s3events.ordering import EventLog, newest_per_object
from moderator.s3events.parse import EventKind, S3Event
from moderator.settings import Settings

Submit = Callable[[list[str]], str]  # uris -> job id


class EventStore(Protocol):
    engine: Engine

    def mark_deleted(self, uri: str) -> Any: ...


@dataclass
class Outcome:
    submitted: list[str]
    deleted: list[str]
    dropped: int  # duplicates and stale events
    job_id: str | None = None


class EventHandler:
    def __init__(self, store: EventStore, submit: Submit) -> None:
        self.store = store
        self.submit = submit
        self.log = EventLog(store.engine)

    def handle(self, events: list[S3Event]) -> Outcome:
        fresh = self.log.fresh(newest_per_object(events))
        created = [e.uri for e in fresh if e.kind is EventKind.CREATED]
        removed = [e.uri for e in fresh if e.kind is EventKind.REMOVED]
        job_id = self.submit(created) if created else None
        for uri in removed:
            self.store.mark_deleted(uri)
        self.log.record(fresh)
        return Outcome(submitted=created, deleted=removed, dropped=len(events) - len(fresh), job_id=job_id)


class QueueUnavailable(RuntimeError):
    pass


def queue_submit(settings: Settings) -> Submit:
    """Submit = moderator.queue.enqueue_targets, imported only when events are acted upon."""
    try:
        queue = importlib.import_module("moderator.queue")
    except ImportError as exc:
        raise QueueUnavailable(f"the job queue is not available (moderator.queue: {exc}); S3 events need it") from None
    enqueue: Callable[..., str] = queue.enqueue_targets

    def submit(uris: list[str]) -> str:
        return enqueue(uris, settings)

    return submit


def store_for(settings: Settings) -> EventStore:
    from moderator.store import Store  # the store module pulls in Alembic: only when needed

    store: EventStore = Store(settings.database_url)
    return store

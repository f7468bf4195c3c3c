"""Find the batches the broker lost and send them again, so every job can finish by itself.

A Redis restart without persistence empties the queue; a message taken in the instant before
Redis went away, or one Celery dropped, leaves its job `running` forever. The batch ledger
(store.batches) knows every batch not yet recorded; a batch that has been queued for a while,
is not running, and whose message is neither waiting in its queue nor taken (Redis's unacked
hash) in two checks in a row is lost: it is sent again under the same task id. Items are
never scored twice by this: a copy of a batch that is already recorded is dropped by the
worker, and a batch is counted in its job once (the ledger).

Workers run `Repairer.check` every MODERATOR_QUEUE_REPAIR_INTERVAL seconds (workers/repair.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from moderator.queue.config import time_limits
from moderator.queue.enqueue import publish
from moderator.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from moderator.store import QueuedBatch, Store

log = logging.getLogger("moderator.repair")
LRANGE_CHUNK = 500


def broker_task_ids(app: Celery, queues: Iterable[str]) -> set[str] | None:
    """Ids of the tasks waiting in `queues` or taken and not yet acknowledged; None when the broker is not
    Redis (nothing to look into: no repair). Raises the broker's error when it cannot be reached."""
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)
        if conn.transport.driver_type != "redis":
            return None
        channel: Any = conn.default_channel
        client = channel.client
        found: set[str] = set()
        for queue in queues:
            for priority in channel.priority_steps:
                key = channel._q_for_pri(queue, priority)
                start = 0
                while chunk := client.lrange(key, start, start + LRANGE_CHUNK - 1):
                    found.update(_task_id(raw) for raw in chunk)
                    start += LRANGE_CHUNK
        for raw in client.hvals(channel.unacked_key):
            try:
                found.add(_task_id(json.loads(raw)[0]))
            except (ValueError, IndexError, TypeError):
                continue
        found.discard("")
        return found


def _task_id(message: Any) -> str:
    """The task id of one Celery message (protocol 2: headers.id; protocol 1: properties.correlation_id)."""
    if isinstance(message, bytes | str):
        try:
            message = json.loads(message)
        except ValueError:
            return ""
    if not isinstance(message, dict):
        return ""
    headers = message.get("headers") or {}
    return str(headers.get("id") or (message.get("properties") or {}).get("correlation_id") or "")


class Repairer:
    """One per worker process that checks; several may run at once (the ledger lets one of them re-send)."""

    def __init__(self, settings: Settings, app: Celery, queues: Iterable[str]) -> None:
        self.settings = settings
        self.app = app
        self.queues = sorted(set(queues))
        self.interval = settings.queue_repair_interval
        self._suspects: dict[str, int] = {}  # batch id -> sends, missing in the last check
        self._warned_broker = False

    def check(self, store: Store) -> list[str]:
        """One check: the ids of the batches sent again."""
        from moderator.store import JobBatches

        ledger = JobBatches(store)
        now = datetime.now(UTC)
        # Sent a while ago (not in flight to the broker), and not taken recently: a batch taken less than the
        # hard time limit ago may still be running (its message is taken, or was, before a broker restart).
        candidates = ledger.stalled(
            self.queues,
            sent_before=now - timedelta(seconds=max(1, self.interval)),
            started_before=now - timedelta(seconds=time_limits(self.settings)[1] + 1),
        )
        if not candidates:
            self._suspects = {}
            return []
        present = broker_task_ids(self.app, self.queues)  # after the ledger read: a later send is seen here
        if present is None:
            if not self._warned_broker:
                log.warning("the broker is not Redis: batches it loses cannot be found and sent again")
                self._warned_broker = True
            return []
        missing = [b for b in candidates if b.id not in present]
        # Missing twice in a row with no send in between: not a message caught between queue and unacked.
        confirmed = [b for b in missing if self._suspects.get(b.id) == b.sends]
        self._suspects = {b.id: b.sends for b in missing}
        resent: list[str] = []
        for batch in confirmed:
            if ledger.claim_resend(batch.id, batch.sends):
                self._resend(batch)
                resent.append(batch.id)
                self._suspects.pop(batch.id, None)
        return resent

    def _resend(self, batch: QueuedBatch) -> None:
        publish(self.app, batch, batch.policies)
        log.warning(
            "job %s: batch %s (%d items) was neither queued nor taken (lost by the broker): sent again",
            batch.job_id,
            batch.id,
            len(batch.items),
        )

"""The batch ledger of queued jobs: one row per task, written in the database, not the broker.

A job's progress is counted from here, exactly once per batch (the state change and the
job's counts are one transaction), and what the broker lost (a Redis restart without
persistence, a retry that could not be published) is found here: a batch still `queued`
whose message is neither waiting nor taken is sent again (moderator.queue.repair).
Delivery counts (poison detection) live here too, so a broker restart cannot reset them
into an endless loop nor count a batch twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from moderator.store import jobs
from moderator.store.tables import BatchState, Job, JobBatch, JobState, utcnow

if TYPE_CHECKING:
    from moderator.store.repository import Store


@dataclass(frozen=True)
class Delivery:
    """What a worker learns when it takes a batch."""

    state: BatchState
    deliveries: int  # this delivery's number at this retry (1 for the first)


@dataclass(frozen=True)
class NewBatch:
    id: str
    job_id: str
    queue: str
    items: list[dict[str, Any]]


@dataclass(frozen=True)
class QueuedBatch(NewBatch):
    """A batch not yet recorded, with what it takes to send it again."""

    policies: list[str]
    sends: int


class JobBatches:
    """The ledger API; every method is one transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _insert(self) -> Any:
        dialect = postgresql if self.store.dialect == "postgresql" else sqlite
        return dialect.insert(JobBatch)

    def add(self, batches: Sequence[NewBatch]) -> None:
        """Record batches about to be sent (before the send: a fast worker must find them)."""
        if not batches:
            return
        now = utcnow()
        rows = [
            {"id": b.id, "job_id": b.job_id, "queue": b.queue, "items": b.items, "size": len(b.items)}
            | {"state": BatchState.QUEUED, "sends": 1, "deliveries": 0, "retry": 0, "sent_at": now, "updated_at": now}
            for b in batches
        ]
        with self.store.session() as s:
            s.execute(self._insert().values(rows).on_conflict_do_nothing(index_elements=[JobBatch.id]))

    def begin(self, batch: NewBatch, retry: int) -> Delivery:
        """Count a delivery (deliveries restart at 1 with each retry number); a batch sent before the
        ledger existed is recorded on its first delivery."""
        self.add([batch])
        now = utcnow()
        with self.store.session() as s:
            s.execute(
                update(JobBatch)
                .where(JobBatch.id == batch.id, JobBatch.state.in_([BatchState.QUEUED, BatchState.FAILED]))
                .values(
                    deliveries=case((JobBatch.retry == retry, JobBatch.deliveries + 1), else_=1),
                    retry=retry,
                    started_at=now,
                    updated_at=now,
                )
            )
            state, deliveries = s.execute(
                select(JobBatch.state, JobBatch.deliveries).where(JobBatch.id == batch.id)
            ).one()
        return Delivery(state=BatchState(state), deliveries=int(deliveries))

    def release(self, batch_id: str) -> None:
        """Take back the last delivery's count: it ended cleanly (its retry comes back as the same delivery)."""
        with self.store.session() as s:
            s.execute(
                update(JobBatch)
                .where(JobBatch.id == batch_id, JobBatch.deliveries > 0)
                .values(deliveries=JobBatch.deliveries - 1)
                .execution_options(synchronize_session=False)
            )

    def finish(
        self,
        batch_id: str,
        job_id: str,
        *,
        done: int = 0,
        errors: int = 0,
        skipped: int = 0,
        not_run: Mapping[str, str] | None = None,
    ) -> bool:
        """Mark the batch done and add its counts to the job, once: False if it was already counted.

        `not_run`: policy -> reason for the policies this worker could not run; merged into the job.
        """
        with self.store.session() as s:
            moved = _set_state(s, batch_id, BatchState.DONE, (BatchState.QUEUED, BatchState.FAILED), items=None)
            if not moved:
                return False
            if not_run:
                jobs.add_policies_not_run(s, job_id, not_run)
            jobs.advance_job(s, job_id, done=done, errors=errors, skipped=skipped)
            return True

    def split(self, batch_id: str, job_id: str, queue: str, items: Sequence[dict[str, Any]]) -> list[NewBatch]:
        """Replace a batch by one batch per item ("<id>.<n>"); the children not yet taken by a worker
        (all of them the first time), for the caller to send."""
        children = [NewBatch(f"{batch_id}.{i}", job_id, queue, [ref]) for i, ref in enumerate(items)]
        with self.store.session() as s:
            if _set_state(s, batch_id, BatchState.SPLIT, (BatchState.QUEUED, BatchState.FAILED), items=None):
                now = utcnow()
                rows = [
                    {"id": c.id, "job_id": job_id, "queue": queue, "items": c.items, "size": 1}
                    | {"state": BatchState.QUEUED, "sends": 1, "deliveries": 0, "retry": 0}
                    | {"sent_at": now, "updated_at": now}
                    for c in children
                ]
                s.execute(self._insert().values(rows).on_conflict_do_nothing(index_elements=[JobBatch.id]))
                return children
            waiting = set(
                s.scalars(
                    select(JobBatch.id).where(
                        JobBatch.id.in_([c.id for c in children]),
                        JobBatch.state == BatchState.QUEUED,
                        JobBatch.started_at.is_(None),
                    )
                )
            )
        return [c for c in children if c.id in waiting]

    def fail(self, batch_id: str, job_id: str, message: str) -> None:
        """The batch gave up without recording its items: the job fails with `message`."""
        with self.store.session() as s:
            _set_state(s, batch_id, BatchState.FAILED, (BatchState.QUEUED,))
            jobs.update_job(s, job_id, state=JobState.FAILED, message=message)

    def stalled(
        self, queues: Iterable[str], *, sent_before: datetime, started_before: datetime, limit: int = 1000
    ) -> list[QueuedBatch]:
        """Queued batches of unfinished jobs, sent before `sent_before` and not taken since `started_before`
        (a batch taken later may still be running): the ones a lost message would leave behind."""
        query = (
            select(JobBatch, Job.policies)
            .join(Job, Job.id == JobBatch.job_id)
            .where(
                JobBatch.state == BatchState.QUEUED,
                JobBatch.queue.in_(list(queues)),
                JobBatch.sent_at < sent_before,
                or_(JobBatch.started_at.is_(None), JobBatch.started_at < started_before),
                Job.state.in_([JobState.PENDING, JobState.RUNNING]),
            )
            .order_by(JobBatch.sent_at)
            .limit(limit)
        )
        with self.store.session() as s:
            return [
                QueuedBatch(b.id, b.job_id, b.queue, list(b.items or []), list(policies), b.sends)
                for b, policies in s.execute(query)
            ]

    def claim_resend(self, batch_id: str, sends_seen: int) -> bool:
        """True for the one caller (of several workers checking at once) that is to send the batch again."""
        now = utcnow()
        with self.store.session() as s:
            result = s.execute(
                update(JobBatch)
                .where(and_(JobBatch.id == batch_id, JobBatch.state == BatchState.QUEUED, JobBatch.sends == sends_seen))
                .values(sends=JobBatch.sends + 1, sent_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def states(self, job_id: str) -> dict[str, BatchState]:
        """Every batch of a job by id (tests and diagnostics)."""
        with self.store.session() as s:
            rows = s.execute(select(JobBatch.id, JobBatch.state).where(JobBatch.job_id == job_id))
            return {batch_id: BatchState(state) for batch_id, state in rows}


def _set_state(
    session: Session, batch_id: str, state: BatchState, allowed: tuple[BatchState, ...], **values: Any
) -> bool:
    stmt = (
        update(JobBatch)
        .where(JobBatch.id == batch_id, JobBatch.state.in_(allowed))
        .values(state=state, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]

"""Job rows: what was asked for and how far it got (Store wraps these in a session)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from moderator.store.tables import Job, JobState, utcnow


@dataclass(frozen=True)
class JobInfo:
    id: str
    state: JobState
    targets: list[str]
    policies: list[str]
    total: int | None
    done: int
    errors: int
    skipped: int
    message: str | None
    created_at: datetime
    updated_at: datetime
    policies_not_run: dict[str, str] = field(default_factory=dict)  # policy -> why a worker could not run it


def _info(job: Job) -> JobInfo:
    return JobInfo(
        id=job.id,
        state=job.state,
        targets=list(job.targets),
        policies=list(job.policies),
        total=job.total,
        done=job.done,
        errors=job.errors,
        skipped=job.skipped,
        message=job.message,
        created_at=job.created_at,
        updated_at=job.updated_at,
        policies_not_run=dict(job.policies_not_run or {}),
    )


def create_job(session: Session, targets: Sequence[str], policies: Sequence[str], total: int | None = None) -> str:
    job_id = str(uuid.uuid4())
    now = utcnow()
    session.add(
        Job(
            id=job_id,
            created_at=now,
            updated_at=now,
            state=JobState.PENDING,
            targets=list(targets),
            policies=list(policies),
            total=total,
            done=0,
            errors=0,
            skipped=0,
        )
    )
    return job_id


def update_job(
    session: Session,
    job_id: str,
    *,
    state: JobState | None = None,
    total: int | None = None,
    done: int | None = None,
    errors: int | None = None,
    skipped: int | None = None,
    message: str | None = None,
) -> None:
    """Set the fields given (None leaves a field as it is)."""
    given = {"state": state, "total": total, "done": done, "errors": errors, "skipped": skipped, "message": message}
    values = {k: v for k, v in given.items() if v is not None}
    _update(session, job_id, values)


def advance_job(session: Session, job_id: str, *, done: int = 0, errors: int = 0, skipped: int = 0) -> None:
    """Add counts and move the state on, in one statement (several workers report at once).

    pending -> running when counts are added; -> done once done + errors + skipped reach a
    known total. A failed job stays failed. With no counts, only the done check is made (the
    enqueuer calls it after setting the total, in case the workers finished first).
    """
    counted = Job.done + done + Job.errors + errors + Job.skipped + skipped
    active = Job.state.in_([JobState.PENDING, JobState.RUNNING])
    started = JobState.RUNNING if done or errors or skipped else JobState.PENDING
    state = case(
        (active & Job.total.is_not(None) & (counted >= Job.total), JobState.DONE),
        (Job.state == JobState.PENDING, started),
        else_=Job.state,
    )
    values = {"done": Job.done + done, "errors": Job.errors + errors, "skipped": Job.skipped + skipped}
    _update(session, job_id, {**values, "state": state})


def add_policies_not_run(session: Session, job_id: str, not_run: Mapping[str, str]) -> None:
    """Merge policy -> reason into the job (workers may differ: the job keeps every policy some worker skipped).

    Read under a row lock (PostgreSQL) or after this transaction's first write (SQLite): no merge is lost.
    """
    held = session.scalar(select(Job.policies_not_run).where(Job.id == job_id).with_for_update())
    merged = {**(held or {}), **not_run}
    if merged != held:
        _update(session, job_id, {"policies_not_run": merged})


def _update(session: Session, job_id: str, values: Mapping[str, Any]) -> None:
    stmt = update(Job).where(Job.id == job_id).values(**values, updated_at=utcnow())
    if session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 0:  # type: ignore[attr-defined]
        raise KeyError(f"no job {job_id!r}")


def get_job(session: Session, job_id: str) -> JobInfo | None:
    job = session.get(Job, job_id)
    return None if job is None else _info(job)


def list_jobs(session: Session, limit: int = 20) -> list[JobInfo]:
    """Newest first."""
    jobs = session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit))
    return [_info(job) for job in jobs]

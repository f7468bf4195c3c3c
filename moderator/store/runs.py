"""Checkpoints of streaming batch jobs over the store (issue 17, migration 0008).

A rescore walks the items in id order, one chunk per transaction; the transaction that
stores a chunk's results also moves its run's checkpoint here, so a killed run resumes
after the last chunk committed and never leaves half of one written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Connection, String, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from moderator.store.tables import Base, Json, UTCDateTime, table_of, utcnow


class RescoreRun(Base):
    """One rescore of one policy version over one model's embeddings."""

    __tablename__ = "rescore_runs"

    policy: Mapped[str] = mapped_column(String(255), primary_key=True)
    policy_version: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_item_id: Mapped[int] = mapped_column(BigInteger, default=0)  # the last item id committed
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    # Totals so far, so a resumed run reports the whole run.
    items: Mapped[int] = mapped_column(BigInteger, default=0)
    missing: Mapped[int] = mapped_column(BigInteger, default=0)
    decisions_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    actions: Mapped[dict[str, int]] = mapped_column(Json, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass
class Checkpoint:
    """Where a run stands: resume after `last_item_id` with these totals."""

    last_item_id: int = 0
    items: int = 0
    missing: int = 0
    decisions_changed: int = 0
    actions: Counter[str] = field(default_factory=Counter)


def start_run(conn: Connection, policy: str, version: str, model_id: str) -> Checkpoint:
    """The checkpoint to go on from: an unfinished run's, or a fresh one (no row, or the last
    run of this version finished: a rescore is repeatable, so it starts again)."""
    t = RescoreRun
    row = conn.execute(
        select(t.last_item_id, t.finished, t.items, t.missing, t.decisions_changed, t.actions).where(
            t.policy == policy, t.policy_version == version, t.model_id == model_id
        )
    ).one_or_none()
    if row is None or row.finished:
        return Checkpoint()
    return Checkpoint(row.last_item_id, row.items, row.missing, row.decisions_changed, Counter(row.actions or {}))


def save_checkpoint(
    conn: Connection, policy: str, version: str, model_id: str, at: Checkpoint, *, finished: bool = False
) -> None:
    """Upsert the run's row inside the caller's transaction (the one holding the chunk's results)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    now = utcnow()
    values = {
        "last_item_id": at.last_item_id,
        "finished": finished,
        "items": at.items,
        "missing": at.missing,
        "decisions_changed": at.decisions_changed,
        "actions": dict(at.actions),
        "updated_at": now,
    }
    stmt = dialect.insert(table_of(RescoreRun)).values(
        policy=policy, policy_version=version, model_id=model_id, started_at=now, **values
    )
    keys = ["policy", "policy_version", "model_id"]
    if at.last_item_id == 0 and not finished:  # a fresh start: the start time moves too
        values["started_at"] = now
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=values))

"""Review leases: a reviewer opening or claiming a content holds it for a few minutes.

A lease is per content (sha256): the queue shows each content once, and a decision applies to
every item with those bytes. Expiry is a timestamp compare in every query (`expires_at > now`):
nothing has to run to free a lease, an abandoned one simply stops counting. Taking a lease is
one conditional UPDATE (mine already, or expired) or else an INSERT that does nothing on a
conflict, so two reviewers racing for one content cannot both get it, on SQLite or PostgreSQL
(the second UPDATE waits for the first's row lock and then no longer matches).

The queue calls `leased_by_others(db, user, now)` to leave out (or mark) what others hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from moderator.store.review_work import ReviewLease
from moderator.store.tables import table_of

LEASES = table_of(ReviewLease)


@dataclass(frozen=True)
class Lease:
    sha256: str
    holder: str
    expires_at: datetime
    mine: bool  # held by the user who asked

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "holder": self.holder, "expires_at": self.expires_at, "mine": self.mine}


def _insert(db: Session) -> Any:
    dialect = db.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(LEASES)


def acquire(db: Session, sha256: str, holder: str, now: datetime, ttl: timedelta) -> Lease:
    """Take or renew the lease on `sha256` for `holder` until now + ttl, unless someone else holds
    it; returns the lease as it is now (`mine` False: someone else's). The caller commits."""
    expires = now + ttl
    for _ in range(3):  # a lease released between our statements: look again
        taken = db.execute(
            update(LEASES)
            .where(LEASES.c.sha256 == sha256, or_(LEASES.c.holder == holder, LEASES.c.expires_at <= now))
            .values(
                holder=holder,
                expires_at=expires,
                acquired_at=case((LEASES.c.holder == holder, LEASES.c.acquired_at), else_=now),
            )
        )
        if taken.rowcount:  # type: ignore[attr-defined]
            return Lease(sha256, holder, expires, True)
        inserted = db.execute(
            _insert(db)
            .values(sha256=sha256, holder=holder, acquired_at=now, expires_at=expires)
            .on_conflict_do_nothing(index_elements=["sha256"])
            .returning(LEASES.c.sha256)  # rowcount of an INSERT ... ON CONFLICT is -1 with psycopg
        )
        if inserted.first() is not None:
            return Lease(sha256, holder, expires, True)
        current = held_by(db, sha256, now, holder)
        if current is not None:
            return current
    raise RuntimeError(f"lease on {sha256} changed hands three times in one request")


def renew(db: Session, sha256: str, holder: str, now: datetime, ttl: timedelta) -> Lease:
    """The same as acquire: renewing a lease that lapsed takes it again if nobody else did."""
    return acquire(db, sha256, holder, now, ttl)


def release(db: Session, sha256: str, holder: str) -> bool:
    """Give up `holder`'s lease on `sha256` (after a decision, or leaving the page); True if there was one."""
    gone = db.execute(delete(LEASES).where(LEASES.c.sha256 == sha256, LEASES.c.holder == holder))
    return bool(gone.rowcount)  # type: ignore[attr-defined]


def release_all(db: Session, sha256s: Iterable[str], holder: str) -> int:
    chosen = list(dict.fromkeys(sha256s))
    if not chosen:
        return 0
    gone = db.execute(delete(LEASES).where(LEASES.c.sha256.in_(chosen), LEASES.c.holder == holder))
    return int(gone.rowcount)  # type: ignore[attr-defined]


def held_by(db: Session, sha256: str, now: datetime, viewer: str | None = None) -> Lease | None:
    """The live lease on `sha256`, if any (`mine` relative to `viewer`)."""
    row = db.execute(
        select(LEASES.c.holder, LEASES.c.expires_at).where(LEASES.c.sha256 == sha256, LEASES.c.expires_at > now)
    ).first()
    return None if row is None else Lease(sha256, row.holder, row.expires_at, row.holder == viewer)


def holders(db: Session, sha256s: Iterable[str], now: datetime, viewer: str | None = None) -> dict[str, Lease]:
    """The live leases among `sha256s`."""
    chosen = list(dict.fromkeys(sha256s))
    found: dict[str, Lease] = {}
    for start in range(0, len(chosen), 500):
        rows = db.execute(
            select(LEASES.c.sha256, LEASES.c.holder, LEASES.c.expires_at).where(
                LEASES.c.sha256.in_(chosen[start : start + 500]), LEASES.c.expires_at > now
            )
        )
        for sha, holder, expires in rows:
            found[sha] = Lease(sha, holder, expires, holder == viewer)
    return found


def leased_by_others(db: Session, user: str, now: datetime) -> Select[tuple[str]]:
    """The sha256 of every content someone other than `user` holds now: for the queue to write
    `Item.sha256.not_in(leased_by_others(db, user, now))` (or to mark them taken)."""
    del db  # same signature as the other queue filters; the statement needs no connection
    return select(LEASES.c.sha256).where(LEASES.c.expires_at > now, LEASES.c.holder != user)


def claim(db: Session, candidates: Iterable[str], holder: str, now: datetime, ttl: timedelta, n: int) -> list[Lease]:
    """Take up to `n` leases among `candidates` (in order), skipping the contents others hold."""
    got: list[Lease] = []
    for sha in dict.fromkeys(candidates):
        if len(got) >= n:
            break
        lease = acquire(db, sha, holder, now, ttl)
        if lease.mine:
            got.append(lease)
    return got

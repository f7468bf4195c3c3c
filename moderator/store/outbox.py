"""The decision-event outbox: events written in the transaction that changes a decision.

Two writers, both inside the caller's transaction:
- `emit_decided` (from results.refresh_decisions, the one refresh every scan, worker, rescore
  and /api/moderate goes through): one `item.decided` per item whose pipeline decision the
  refresh just changed, in ONE `INSERT ... SELECT` (a rescore of millions of rows stays in SQL).
  The refresh bumps items.event_seq with the decision; an item whose current seq has no event
  yet is one this transaction changed (its row is locked by that UPDATE until commit).
- `record_review` (from review/decisions.py): a `review.decided`, then an `item.decided` when
  the review changed the item's current decision.

The payload is actions/events.py `Event` without its outbox columns (id, type, item_id, seq,
created_at). Nothing here sends anything: the deliverer reads the outbox (store/deliveries.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    String,
    bindparam,
    exists,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy.orm import Session

from moderator.store.engine import IdRange, id_in
from moderator.store.tables import Item, OutboxEvent, Result, Review, UTCDateTime, table_of, utcnow
from moderator.types import ItemStatus

ITEM_DECIDED = "item.decided"
REVIEW_DECIDED = "review.decided"
_COLUMNS = ["id", "type", "item_id", "seq", "payload", "created_at", "dispatched"]


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


def _key(name: str) -> Any:
    return literal_column(f"'{name}'", String)  # a constant key: typed text on PostgreSQL too


def _latest_review(items: Any) -> Any:
    reviews = table_of(Review)
    return (
        select(reviews.c.new_decision)
        .where(reviews.c.item_uri == items.c.uri)
        .order_by(reviews.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _payload_sql(dialect: str, items: Any) -> Any:
    """The event payload of each item row, built by the database (json_object / jsonb_build_object)."""
    results = table_of(Result).alias("event_results")
    pg = dialect == "postgresql"

    def obj(**fields: Any) -> Any:
        args: list[Any] = []
        for name, value in fields.items():
            args += [_key(name), value]
        return (func.jsonb_build_object if pg else func.json_object)(*args)

    fired = results.c.fired if pg else func.json(results.c.fired)
    entry = obj(
        policy=results.c.policy,
        version=results.c.policy_version,
        scorer=results.c.scorer,
        model_id=results.c.model_id,
        action=results.c.action,
        fired=fired,
    )
    listed = func.coalesce(func.jsonb_agg(entry), literal_column("'[]'::jsonb")) if pg else func.json_group_array(entry)
    policies = select(listed).where(results.c.item_id == items.c.id).scalar_subquery()
    review = _latest_review(items)
    return obj(
        uri=items.c.uri,
        sha256=items.c.sha256,
        external_id=items.c.external_id,
        decision=func.coalesce(review, items.c.decision),
        previous_decision=func.coalesce(review, items.c.previous_decision),
        pipeline_decision=items.c.decision,
        policies=policies if pg else func.json(policies),
        review=null(),
    )


def _event_id_sql(dialect: str) -> Any:
    if dialect == "postgresql":
        return literal_column("'evt_' || md5(random()::text || clock_timestamp()::text)", String)
    return literal_column("'evt_' || lower(hex(randomblob(16)))", String)


def emit_decided(conn: Connection, chosen: Sequence[int] | IdRange | Select[Any], now: datetime | None = None) -> int:
    """Write an item.decided event for each chosen item whose event_seq has no event yet
    (the ones the refresh just changed); returns how many were written."""
    items = table_of(Item)
    outbox = table_of(OutboxEvent)
    dialect = conn.dialect.name
    rows = select(
        _event_id_sql(dialect),
        literal(ITEM_DECIDED, String),
        items.c.id,
        items.c.event_seq,
        _payload_sql(dialect, items),
        bindparam("event_now", now or utcnow(), type_=UTCDateTime()),
        literal(False),
    ).where(
        id_in(items.c.id, chosen),
        items.c.status == ItemStatus.OK,
        items.c.event_seq > 0,
        ~exists().where(outbox.c.item_id == items.c.id, outbox.c.seq == items.c.event_seq),
    )
    return int(conn.execute(insert(outbox).from_select(_COLUMNS, rows, include_defaults=False)).rowcount)


def _policies(conn: Connection, item_id: int) -> list[dict[str, Any]]:
    r = table_of(Result)
    stmt = select(r.c.policy, r.c.policy_version, r.c.scorer, r.c.model_id, r.c.action, r.c.fired).where(
        r.c.item_id == item_id
    )
    return [
        {"policy": p, "version": v, "scorer": s, "model_id": m, "action": str(a), "fired": list(f)}
        for p, v, s, m, a, f in conn.execute(stmt.order_by(r.c.policy))
    ]


def record_review(db: Session, item_id: int, review: Review) -> list[str]:
    """The events of one appended review (flushed, so it has its id): review.decided, then
    item.decided when the current decision changed. Returns their ids, in seq order."""
    conn = db.connection()
    items = table_of(Item)
    changed = review.new_decision != review.old_decision
    # The increment takes the item's row lock (PostgreSQL): seqs are handed out one writer at a time.
    bump = (
        update(items)
        .where(items.c.id == item_id)
        .values(event_seq=items.c.event_seq + (2 if changed else 1))
        .returning(items.c.event_seq, items.c.uri, items.c.sha256, items.c.external_id, items.c.decision)
    )
    seq, uri, sha256, external_id, pipeline = conn.execute(bump).one()
    first = seq - (1 if changed else 0)
    now = review.created_at or utcnow()
    base = {
        "uri": uri,
        "sha256": sha256,
        "external_id": external_id,
        "pipeline_decision": str(pipeline) if pipeline else None,
        "policies": _policies(conn, item_id),
    }
    info = {
        "id": review.id,
        "reviewer": review.reviewer,
        "action": review.verdict,
        "labels": list(review.labels or []),
        "note": review.note or "",
        "via": review.via,
        "decided_at": now.isoformat(),
    }
    decided = {"decision": review.new_decision, "previous_decision": review.old_decision}
    events = [(REVIEW_DECIDED, first, {**base, **decided, "review": info})]
    if changed:
        events.append((ITEM_DECIDED, first + 1, {**base, **decided, "review": None}))
    ids = [new_event_id() for _ in events]
    rows = [
        {"id": i, "type": t, "item_id": item_id, "seq": s, "payload": p, "created_at": now, "dispatched": False}
        for i, (t, s, p) in zip(ids, events, strict=True)
    ]
    conn.execute(insert(table_of(OutboxEvent)), rows)
    return ids

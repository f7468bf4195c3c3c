"""The delivery ledger of decision events: webhook endpoints, fan-out, leased claims, outcomes.

Every function is one short transaction, so several deliverers (replicas) share the ledger:
- `dispatch` turns undispatched outbox events into one event_deliveries row per target
  (rows locked FOR UPDATE SKIP LOCKED on PostgreSQL; the unique (event, kind, target) makes
  a repeat harmless everywhere);
- `claim` leases due deliveries of one target to one owner: FOR UPDATE SKIP LOCKED then an
  UPDATE on PostgreSQL, one atomic UPDATE ... RETURNING on SQLite. A delivery whose item has
  an older pending delivery to the same target waits for it (in order per item and target);
- `finish` records the outcome, only while the caller still holds the lease.
A lease outlives the request timeout, so a deliverer killed mid-request leaves its claims
to be taken again when their lease expires: at least once, never twice at the same time.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from moderator.store.repository import Store
from moderator.store.tables import DeliveryState, EventDelivery, OutboxEvent, WebhookEndpoint, table_of, utcnow


@dataclass(frozen=True)
class OutboxRow:
    id: str
    type: str
    item_id: int
    seq: int
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class EndpointInfo:
    id: int
    url: str
    secret: str
    events: list[str]
    decisions: list[str]
    policies: list[str]
    enabled: bool
    created_at: datetime


@dataclass(frozen=True)
class DeliveryInfo:
    id: int
    event_id: str
    event_type: str
    kind: str
    target: str
    item_id: int
    seq: int
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    last_status: int | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    kind: str
    target: str
    attempts: int  # before this one
    retry_since: datetime
    event: OutboxRow


# A fan-out: (kind, target) pairs that want an event.
TargetsOf = Callable[[Sequence[OutboxRow]], dict[str, list[tuple[str, str]]]]


def _insert(store: Store, model: type[Any]) -> Any:
    return (postgresql if store.dialect == "postgresql" else sqlite).insert(table_of(model))


def _outbox_row(r: Any) -> OutboxRow:
    return OutboxRow(r.id, r.type, int(r.item_id), int(r.seq), dict(r.payload), r.created_at)


# -- endpoints ------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and base64 of 24 random bytes."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def add_endpoint(
    store: Store, url: str, *, events: Sequence[str] = (), decisions: Sequence[str] = (), policies: Sequence[str] = ()
) -> EndpointInfo:
    with store.session() as s:
        ep = WebhookEndpoint(
            url=url, secret=new_secret(), events=list(events), decisions=list(decisions), policies=list(policies)
        )
        s.add(ep)
        s.flush()
        return _endpoint(ep)


def _endpoint(ep: WebhookEndpoint) -> EndpointInfo:
    return EndpointInfo(
        ep.id, ep.url, ep.secret, list(ep.events), list(ep.decisions), list(ep.policies), ep.enabled, ep.created_at
    )


def list_endpoints(store: Store, *, enabled_only: bool = False) -> list[EndpointInfo]:
    with store.session() as s:
        stmt = select(WebhookEndpoint).order_by(WebhookEndpoint.id)
        if enabled_only:
            stmt = stmt.where(WebhookEndpoint.enabled.is_(True))
        return [_endpoint(ep) for ep in s.scalars(stmt)]


def remove_endpoint(store: Store, endpoint_id: int) -> bool:
    """Remove an endpoint and its deliveries not yet made (delivered ones stay in the ledger)."""
    with store.session() as s:
        s.execute(
            delete(EventDelivery).where(
                EventDelivery.kind == "webhook",
                EventDelivery.target == str(endpoint_id),
                EventDelivery.state != DeliveryState.DELIVERED,
            )
        )
        return bool(s.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)).rowcount)  # type: ignore[attr-defined]


# -- events ---------------------------------------------------------------------------------


def load_events(store: Store, ids: Iterable[str]) -> dict[str, OutboxRow]:
    with store.session() as s:
        rows = s.execute(select(table_of(OutboxEvent)).where(OutboxEvent.id.in_(list(ids))))
        return {r.id: _outbox_row(r) for r in rows}


def list_events(store: Store, *, item_id: int | None = None, limit: int = 1000) -> list[OutboxRow]:
    """Outbox events, oldest first (per item: in seq order)."""
    stmt = select(table_of(OutboxEvent)).order_by(OutboxEvent.created_at, OutboxEvent.item_id, OutboxEvent.seq)
    if item_id is not None:
        stmt = stmt.where(OutboxEvent.item_id == item_id)
    with store.session() as s:
        return [_outbox_row(r) for r in s.execute(stmt.limit(limit))]


def _delivery_rows(rows: Sequence[OutboxRow], fanned: dict[str, list[tuple[str, str]]], now: datetime) -> list[Any]:
    return [
        {
            "event_id": e.id,
            "kind": kind,
            "target": target,
            "item_id": e.item_id,
            "seq": e.seq,
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "retry_since": now,
            "created_at": now,
        }
        for e in rows
        for kind, target in fanned.get(e.id, [])
    ]


def dispatch(store: Store, targets_of: TargetsOf, *, limit: int = 500) -> int:
    """Fan out up to `limit` undispatched events (oldest first); returns how many."""
    outbox = table_of(OutboxEvent)
    stmt = select(outbox).where(outbox.c.dispatched.is_(False)).order_by(outbox.c.created_at, outbox.c.seq)
    stmt = stmt.limit(limit)
    if store.dialect == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    with store.session() as s:
        rows = [_outbox_row(r) for r in s.execute(stmt)]
        if not rows:
            return 0
        deliveries = _delivery_rows(rows, targets_of(rows), utcnow())
        if deliveries:
            s.execute(_insert(store, EventDelivery).on_conflict_do_nothing(), deliveries)
        s.execute(update(outbox).where(outbox.c.id.in_([r.id for r in rows])).values(dispatched=True))
    return len(rows)


def replay(store: Store, event_id: str, targets_of: TargetsOf) -> int | None:
    """Send an event again to every target that wants it now (pending from now, attempts from 0);
    None when there is no such event, else the number of deliveries queued."""
    events = load_events(store, [event_id])
    if event_id not in events:
        return None
    now = utcnow()
    rows = _delivery_rows([events[event_id]], targets_of([events[event_id]]), now)
    with store.session() as s:
        reset = {
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "retry_since": now,
            "lease_owner": None,
            "lease_expires": None,
            "last_error": None,
        }
        s.execute(update(EventDelivery).where(EventDelivery.event_id == event_id).values(**reset))
        if rows:
            s.execute(_insert(store, EventDelivery).on_conflict_do_nothing(), rows)
        s.execute(update(OutboxEvent).where(OutboxEvent.id == event_id).values(dispatched=True))
        return int(s.scalar(select(func.count(EventDelivery.id)).where(EventDelivery.event_id == event_id)) or 0)


# -- claims ---------------------------------------------------------------------------------


def _due(now: datetime, d: Any = EventDelivery) -> Any:
    return and_(
        d.state == DeliveryState.PENDING,
        d.next_attempt_at <= now,
        or_(d.lease_expires.is_(None), d.lease_expires < now),
    )


def due_targets(store: Store, now: datetime | None = None) -> list[tuple[str, str]]:
    """(kind, target) pairs with deliveries due now."""
    stmt = select(EventDelivery.kind, EventDelivery.target).where(_due(now or utcnow())).distinct()
    with store.session() as s:
        return [(k, t) for k, t in s.execute(stmt)]


def claim(
    store: Store, owner: str, kind: str, target: str, *, limit: int, lease_s: float, now: datetime | None = None
) -> list[Claimed]:
    """Lease up to `limit` due deliveries of one target to `owner` (in seq order per item)."""
    at = now or utcnow()
    # Aliases: inside the UPDATE below, a plain reference would correlate to the updated row.
    cand, earlier = aliased(EventDelivery), aliased(EventDelivery)
    waits = exists().where(
        earlier.kind == cand.kind,
        earlier.target == cand.target,
        earlier.item_id == cand.item_id,
        earlier.seq < cand.seq,
        earlier.state == DeliveryState.PENDING,
    )
    due = (
        select(cand.id)
        .where(cand.kind == kind, cand.target == target, _due(at, cand), ~waits)
        .order_by(cand.next_attempt_at, cand.id)
        .limit(limit)
    )
    lease = {"lease_owner": owner, "lease_expires": at + timedelta(seconds=lease_s)}
    with store.session() as s:
        if store.dialect == "postgresql":
            ids = list(s.scalars(due.with_for_update(skip_locked=True, of=cand)))
            if not ids:
                return []
            s.execute(update(EventDelivery).where(EventDelivery.id.in_(ids)).values(**lease))
        else:
            # One statement: SQLite runs it under the write lock, so two replicas never lease one row.
            stmt = (
                update(EventDelivery)
                .where(EventDelivery.id.in_(due), _due(at))
                .values(**lease)
                .returning(EventDelivery.id)
            )
            ids = list(s.scalars(stmt))
            if not ids:
                return []
        rows = s.execute(
            select(EventDelivery, table_of(OutboxEvent))
            .join(OutboxEvent, OutboxEvent.id == EventDelivery.event_id)
            .where(EventDelivery.id.in_(ids))
            .order_by(EventDelivery.item_id, EventDelivery.seq)
        )
        out = []
        for row in rows:
            d = row[0]
            event = OutboxRow(row.id, row.type, int(row.item_id), int(row.seq), dict(row.payload), row.created_at)
            out.append(Claimed(d.id, d.kind, d.target, d.attempts, d.retry_since, event))
        return out


def finish(
    store: Store,
    delivery_id: int,
    owner: str,
    *,
    state: DeliveryState,
    status: int | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> bool:
    """Record one attempt's outcome (and release the lease); False when the lease was lost."""
    now = utcnow()
    values: dict[str, Any] = {
        "state": state,
        "attempts": EventDelivery.attempts + 1,
        "lease_owner": None,
        "lease_expires": None,
        "last_status": status,
        "last_error": error[:2000] if error else None,
    }
    if state is DeliveryState.DELIVERED:
        values["delivered_at"] = now
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    stmt = update(EventDelivery).where(EventDelivery.id == delivery_id, EventDelivery.lease_owner == owner)
    with store.session() as s:
        return bool(s.execute(stmt.values(**values)).rowcount)  # type: ignore[attr-defined]


def list_deliveries(
    store: Store, *, state: DeliveryState | None = None, event_id: str | None = None, limit: int = 100
) -> list[DeliveryInfo]:
    """Deliveries, newest first."""
    stmt = (
        select(EventDelivery, OutboxEvent.type)
        .join(OutboxEvent, OutboxEvent.id == EventDelivery.event_id)
        .order_by(EventDelivery.id.desc())
        .limit(limit)
    )
    if state is not None:
        stmt = stmt.where(EventDelivery.state == state)
    if event_id is not None:
        stmt = stmt.where(EventDelivery.event_id == event_id)
    with store.session() as s:
        return [
            DeliveryInfo(
                d.id,
                d.event_id,
                type_,
                d.kind,
                d.target,
                d.item_id,
                d.seq,
                d.state,
                d.attempts,
                d.next_attempt_at,
                d.last_error,
                d.last_status,
                d.delivered_at,
            )
            for d, type_ in s.execute(stmt)
        ]

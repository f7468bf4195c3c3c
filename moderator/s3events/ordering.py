"""Drop duplicate and out-of-order S3 events by their sequencer.

Per (bucket, key) the highest sequencer acted upon is kept in `s3_event_state`.
An event whose sequencer is not above it is stale. The state is recorded only
after the event was acted upon (enqueued, marked deleted): a failure before that
leaves the event to be redelivered rather than forgotten.
Events without a sequencer (some S3-compatible stores) cannot be ordered: they
always pass, and the pipeline's ETag check keeps rescans cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from moderator.s3events.parse import S3Event
from moderator.store.tables import S3EventState, utcnow


def newest_per_object(events: Iterable[S3Event]) -> list[S3Event]:
    """One event per object: the highest sequencer (the later one when equal or absent), in first-seen order."""
    newest: dict[tuple[str, str], S3Event] = {}
    for event in events:
        key = (event.bucket, event.key)
        held = newest.get(key)
        if held is None or not _older(event.sequencer, held.sequencer):
            newest[key] = event
    return list(newest.values())


def _older(new: str | None, held: str | None) -> bool:
    # Sequencers are normalised to equal width (parse.normalise_sequencer): string order is event order.
    return new is not None and held is not None and new < held


class EventLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def fresh(self, events: list[S3Event]) -> list[S3Event]:
        """The events not superseded by one already acted upon (sequencer <= the stored one)."""
        ordered = [e for e in events if e.sequencer is not None]
        if not ordered:
            return list(events)
        keys = {(e.bucket, e.key) for e in ordered}
        stored: dict[tuple[str, str], str] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(keys), 200):
                query = select(S3EventState.bucket, S3EventState.key, S3EventState.sequencer).where(
                    tuple_(S3EventState.bucket, S3EventState.key).in_(chunk)
                )
                stored.update({(b, k): s for b, k, s in conn.execute(query)})
        return [
            e
            for e in events
            if e.sequencer is None or (held := stored.get((e.bucket, e.key))) is None or e.sequencer > held
        ]

    def record(self, events: Iterable[S3Event]) -> None:
        """Remember each event's sequencer; a higher one already stored wins (concurrent listeners)."""
        rows = [
            {"bucket": e.bucket, "key": e.key, "sequencer": e.sequencer, "state": e.kind.value, "updated_at": utcnow()}
            for e in events
            if e.sequencer is not None
        ]
        if not rows:
            return
        with self.engine.begin() as conn:
            for row in rows:
                conn.execute(self._upsert(row))

    def _upsert(self, row: dict[str, Any]) -> Any:
        dialect = self.engine.dialect.name
        module: Any = {"sqlite": sqlite, "postgresql": postgresql}.get(dialect)
        if module is None:
            raise NotImplementedError(f"S3 event ordering needs SQLite or PostgreSQL, not {dialect}")
        stmt = module.insert(S3EventState).values(**row)
        return stmt.on_conflict_do_update(
            index_elements=[S3EventState.bucket, S3EventState.key],
            set_={
                "sequencer": stmt.excluded.sequencer,
                "state": stmt.excluded.state,
                "updated_at": stmt.excluded.updated_at,
            },
            where=S3EventState.sequencer < stmt.excluded.sequencer,
        )


def _chunks(items: list[tuple[str, str]], size: int) -> Iterable[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

"""S3 event ordering state (s3_event_state via s3events.ordering.EventLog) on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from moderator.s3events.ordering import EventLog
from moderator.s3events.parse import EventKind, S3Event, normalise_sequencer
from moderator.store import Store
from moderator.store.tables import S3EventState


def ev(key: str, seq: str | None, kind: EventKind = EventKind.CREATED, bucket: str = "b") -> S3Event:
    return S3Event(kind=kind, bucket=bucket, key=key, sequencer=normalise_sequencer(seq) if seq else None)


def keys(events: list[S3Event]) -> list[tuple[str, str, str | None]]:
    return [(e.bucket, e.key, e.sequencer and e.sequencer.lstrip("0")) for e in events]


def test_events_at_or_below_the_recorded_sequencer_are_stale(store: Store) -> None:
    log = EventLog(store.engine)
    log.record([ev("k é/1.png", "30")])
    candidates = [
        ev("k é/1.png", "30"),  # duplicate
        ev("k é/1.png", "2F", EventKind.REMOVED),  # older
        ev("k é/1.png", "100", EventKind.REMOVED),  # newer: longer hex is larger
        ev("k é/1.png", "40", bucket="other"),  # another bucket
        ev("k é/2.png", "01"),  # never seen
        ev("k é/1.png", None),  # cannot be ordered: passes
    ]
    assert keys(log.fresh(candidates)) == [
        ("b", "k é/1.png", "100"),
        ("other", "k é/1.png", "40"),
        ("b", "k é/2.png", "1"),
        ("b", "k é/1.png", None),
    ]


def test_recording_keeps_the_highest_sequencer(store: Store) -> None:
    log = EventLog(store.engine)
    log.record([ev("a", "30", EventKind.REMOVED)])
    log.record([ev("a", "20")])  # a slower listener finishing late must not lower it
    log.record([ev("b", "05"), ev("b", None)])
    with store.engine.connect() as conn:
        rows = {r.key: (r.sequencer.lstrip("0"), r.state) for r in conn.execute(select(S3EventState))}
    assert rows == {"a": ("30", "removed"), "b": ("5", "created")}
    log.record([ev("a", "31")])
    assert log.fresh([ev("a", "30"), ev("a", "32")]) == [ev("a", "32")]

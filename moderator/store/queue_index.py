"""The indexed review queue: one row per flagged, undecided content, kept with the results (issues 17, 18).

A content is the bytes (sha256); its places are the scored items holding those bytes (URIs,
archive members, S3 keys, uploads). The queue holds a content while one of its places is
flagged (review or block) and no reviewer decided it (`content_decisions`). Every table here
is derived from items, results and reviews, so it can be rebuilt at any time (`rebuild`).

- `queue_contents`: the sort key (severity desc, top score desc, representative item id desc)
  in one composite index: a page is an index range read by key, never an OFFSET over a sort.
- `queue_facets`: one row per (filter value, content) with a copy of the sort key, so a
  filtered page (policy, class, policy/class, tag) is a range of one index too.
- `queue_places`: where each queued content appears (uri by prefix: the source filter).
- `content_decisions`: the reviewer decision of a content; later items with those bytes
  arrive decided (a review "same content as item N" is appended for them, see `propagate`).

`sync` is called by store/results.refresh_decisions (the one refresh every writer goes
through) in the writer's transaction; it rewrites only the contents of the given items that
are flagged or queued (about 5% of a chunk), or rebuilds everything for a policy-wide refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from moderator.store.engine import IdList, IdRange, chunks, id_in, ids_sql
from moderator.store.outbox import record_review
from moderator.store.tables import Base, Item, Review, UTCDateTime, table_of, utcnow
from moderator.types import Action, ItemStatus

FLAGGED = (Action.REVIEW.value, Action.BLOCK.value)
SEVERITIES = (Action.BLOCK.severity, Action.REVIEW.severity)  # the queue's order
# Byte order on PostgreSQL whatever the database's collation: a uri prefix is an index range.
PlaceUri = Text().with_variant(Text(collation="C"), "postgresql")
CONTENT_VIA = "content"  # the `via` of a review that a decision on the same bytes wrote


class QueueContent(Base):
    __tablename__ = "queue_contents"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))  # review or block: the most severe of its places
    severity: Mapped[int] = mapped_column(Integer)
    top_score: Mapped[float] = mapped_column(Float)  # the highest score of a class that fired review or block
    item_id: Mapped[int] = mapped_column(BigInteger)  # the representative place: the first flagged item
    items: Mapped[int] = mapped_column(Integer)  # how many places
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())  # the newest place's

    __table_args__ = (
        Index("ix_queue_contents_order", "severity", "top_score", "item_id"),
        Index(None, "updated_at"),
    )


class QueueFacet(Base):
    """A filter value of a queued content: p:<policy>, c:<class>, pc:<policy>/<class> (classes that
    fired review or block) or t:<tag> (any tag of any place), with the content's sort key."""

    __tablename__ = "queue_facets"

    facet: Mapped[str] = mapped_column(String(320), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    severity: Mapped[int] = mapped_column(Integer)
    top_score: Mapped[float] = mapped_column(Float)
    item_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_queue_facets_order", "facet", "severity", "top_score", "item_id"),
        Index(None, "sha256"),
    )


class QueuePlace(Base):
    __tablename__ = "queue_places"

    item_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(PlaceUri)

    __table_args__ = (Index(None, "sha256", "item_id"), Index(None, "uri"))


class ContentDecision(Base):
    """The latest reviewer decision on a content; applies to each of its places, now and later."""

    __tablename__ = "content_decisions"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(16))
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"), index=True)
    item_id: Mapped[int | None] = mapped_column(BigInteger)  # the place the reviewer decided on
    reviewer: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# -- maintenance (set-based SQL, in the writer's transaction) ------------------------------

_SEV = "CASE i.decision WHEN 'block' THEN 3 WHEN 'review' THEN 2 ELSE 0 END"


def _json(dialect: str) -> dict[str, str]:
    """Dialect fragments: the fired entries and tags of a result row `r` as tables."""
    if dialect == "postgresql":
        return {
            "fired": "CROSS JOIN LATERAL jsonb_array_elements(r.fired) AS e(value)",
            "name": "(e.value ->> 'name')",
            "action": "(e.value ->> 'action')",
            "score": "CAST(e.value ->> 'score' AS DOUBLE PRECISION)",
            "tags": "CROSS JOIN LATERAL jsonb_array_elements_text(r.tags) AS t(value)",
        }
    return {
        "fired": "CROSS JOIN json_each(r.fired) AS e",
        "name": "json_extract(e.value, '$.name')",
        "action": "json_extract(e.value, '$.action')",
        "score": "CAST(json_extract(e.value, '$.score') AS REAL)",
        "tags": "CROSS JOIN json_each(r.tags) AS t",
    }


def _statements(dialect: str, scope: str) -> list[str]:
    """Rewrite the queue rows of the contents `scope` selects (a condition on `{c}.sha256`)."""
    j = _json(dialect)
    flagged = f"{j['action']} IN ('review', 'block')"
    in_i = scope.format(c="i")  # on items' side: their sha256 index finds the few rows (given statistics: GrowthWatch)
    # The results of the contents' places, read once; their flagged classes, expanded once.
    facets = (
        "WITH base AS (SELECT i.sha256 AS sha256, r.policy AS policy, r.fired AS fired, r.tags AS tags "
        f"FROM items i JOIN results r ON r.item_id = i.id WHERE {in_i} AND i.status = 'ok'), "
        f"flag AS (SELECT r.sha256 AS sha256, r.policy AS policy, {j['name']} AS name "
        f"FROM base r {j['fired']} WHERE {flagged}), "
        "f AS (SELECT 'p:' || policy AS facet, sha256 FROM flag UNION SELECT 'c:' || name, sha256 FROM flag "
        "UNION SELECT 'pc:' || policy || '/' || name, sha256 FROM flag "
        f"UNION SELECT 't:' || t.value, r.sha256 FROM base r {j['tags']}) "
    )
    return [
        f"DELETE FROM queue_facets WHERE {scope.format(c='queue_facets')}",
        f"DELETE FROM queue_places WHERE {scope.format(c='queue_places')}",
        f"DELETE FROM queue_contents WHERE {scope.format(c='queue_contents')}",
        # One row per flagged content without a decision; the top score is filled below.
        "INSERT INTO queue_contents (sha256, decision, severity, top_score, item_id, items, updated_at) "
        f"SELECT i.sha256, CASE MAX({_SEV}) WHEN 3 THEN 'block' ELSE 'review' END, MAX({_SEV}), 0, "
        f"MIN(CASE WHEN {_SEV} >= 2 THEN i.id END), COUNT(*), MAX(i.updated_at) "
        f"FROM items i WHERE {scope.format(c='i')} AND i.status = 'ok' "
        "AND NOT EXISTS (SELECT 1 FROM content_decisions d WHERE d.sha256 = i.sha256) "
        f"GROUP BY i.sha256 HAVING MAX({_SEV}) >= 2",
        "UPDATE queue_contents SET top_score = COALESCE(("
        f"SELECT MAX({j['score']}) FROM items i JOIN results r ON r.item_id = i.id {j['fired']} "
        f"WHERE i.sha256 = queue_contents.sha256 AND i.status = 'ok' AND {flagged}), 0) "
        f"WHERE {scope.format(c='queue_contents')}",
        "INSERT INTO queue_places (item_id, sha256, uri) SELECT i.id, i.sha256, i.uri "
        f"FROM queue_contents q JOIN items i ON i.sha256 = q.sha256 AND i.status = 'ok' WHERE {in_i}",
        f"{facets}INSERT INTO queue_facets (facet, sha256, severity, top_score, item_id) "
        "SELECT f.facet, q.sha256, q.severity, q.top_score, q.item_id FROM f "
        "JOIN queue_contents q ON q.sha256 = f.sha256",
    ]


def _run(conn: Connection, scope: str, shas: Sequence[str] | None = None) -> None:
    for sql in _statements(conn.dialect.name, scope):
        stmt = text(sql)
        if shas is not None:
            stmt = stmt.bindparams(bindparam("shas", expanding=True))
        conn.execute(stmt, {"shas": list(shas)} if shas is not None else {})


def rebuild(conn: Connection) -> None:
    """Every queue row from items, results and content decisions (migration 0009, policy-wide refresh).

    Costs what the flagged items cost (the decision index finds them), not the whole store."""
    for table in ("queue_facets", "queue_places", "queue_contents"):
        conn.exec_driver_sql(f"DELETE FROM {table}")
    _run(conn, "{c}.sha256 IN (SELECT sha256 FROM items WHERE decision IN ('review', 'block') AND status = 'ok')")


def _affected(conn: Connection, item_ids: Sequence[int] | IdRange) -> set[str]:
    """The contents of these items that are flagged or queued now, and those they just left."""
    params: dict[str, object]
    if isinstance(item_ids, IdRange):
        where, params = "{c} BETWEEN :first AND :last", {"first": item_ids.first, "last": item_ids.last}
    else:  # the ids as one bound list: one statement however many
        where, params = ids_sql(conn.dialect.name, "{c}", "ids"), {"ids": list(item_ids)}
    stmt = text(
        # Three index lookups (an OR EXISTS would let PostgreSQL hash the whole queue).
        f"SELECT sha256 FROM items WHERE {where.format(c='id')} AND sha256 IS NOT NULL "
        "AND decision IN ('review', 'block') UNION SELECT q.sha256 FROM items i "
        f"JOIN queue_contents q ON q.sha256 = i.sha256 WHERE {where.format(c='i.id')} "
        f"UNION SELECT sha256 FROM queue_places WHERE {where.format(c='item_id')}"
    )
    if "ids" in params:
        stmt = stmt.bindparams(bindparam("ids", type_=IdList()))
    return set(conn.execute(stmt, params).scalars())


def sync(conn: Connection, *, item_ids: Sequence[int] | IdRange = (), everything: bool = False) -> None:
    """Bring the queue rows of these items' contents up to date (all of them with `everything`),
    first giving items whose bytes a reviewer already decided that decision. `item_ids` may be
    an IdRange (a rescore's chunk): the queue is derived, so refreshing an untouched item of the
    range changes nothing."""
    if everything:
        rebuild(conn)
        return
    if not isinstance(item_ids, IdRange) and not item_ids:
        return
    apply_content_decisions(conn, item_ids)
    refresh_contents(conn, sorted(_affected(conn, item_ids)))  # chunked there


def refresh_contents(conn: Connection, shas: Iterable[str]) -> None:
    """Recompute the queue rows of these contents (e.g. after a decision was made or undone)."""
    for chunk in chunks(shas):
        _run(conn, "{c}.sha256 IN :shas", chunk)


# -- decisions per content -----------------------------------------------------------------


def _pending_places(conn: Connection, item_ids: Sequence[int] | IdRange) -> list[tuple[int, str]]:
    """(item id, sha256) of items among these whose bytes were decided and which hold no review
    of those bytes yet. Two steps: the join finds none for almost every batch."""
    items, decided, reviews = table_of(Item), table_of(ContentDecision), table_of(Review)
    chosen = item_ids if isinstance(item_ids, IdRange) else list(item_ids)
    found: list[tuple[int, str]] = []
    stmt = select(items.c.id, items.c.uri, items.c.sha256).join(decided, decided.c.sha256 == items.c.sha256)
    candidates = conn.execute(stmt.where(id_in(items.c.id, chosen), items.c.status == ItemStatus.OK)).all()
    for item_id, uri, sha in candidates:
        seen = select(reviews.c.id).where(reviews.c.item_uri == uri, reviews.c.item_sha256 == sha).limit(1)
        if conn.execute(seen).first() is None:
            found.append((int(item_id), str(sha)))
    return found


def apply_content_decisions(conn: Connection, item_ids: Sequence[int] | IdRange) -> int:
    """New places of decided contents arrive decided: a review "same content as item N" each
    (and its events), in the writer's transaction. One indexed join when there are none."""
    pending = _pending_places(conn, item_ids)
    if not pending:
        return 0
    with Session(bind=conn) as db:
        for item_id, sha in pending:
            item, d = db.get(Item, item_id), db.get(ContentDecision, sha)
            assert item is not None and d is not None
            _append(db, item, d.reviewer, d.verdict, d.decision, d.item_id)
        db.flush()
    return len(pending)


def _current(db: Session, item: Item) -> str:
    latest = db.scalar(select(Review.new_decision).where(Review.item_uri == item.uri).order_by(Review.id.desc()))
    return latest or (item.decision.value if item.decision else Action.ALLOW.value)


def _append(db: Session, item: Item, reviewer: str, verdict: str, decision: str, origin: int | None) -> Review:
    review = Review(
        item_uri=item.uri,
        item_sha256=item.sha256,
        reviewer=reviewer,
        via=CONTENT_VIA,
        verdict=verdict,
        old_decision=_current(db, item),
        new_decision=decision,
        labels=[],
        note=f"same content as item {origin}",
        created_at=utcnow(),
    )
    db.add(review)
    db.flush()
    record_review(db, item.id, review)
    return review


def propagate(db: Session, item: Item, review: Review) -> dict[int, Review]:
    """Record `review` (just made on `item`) as the decision of its bytes: the other places get a
    review "same content as item N" (no training labels: the content is labelled once), the
    content leaves the queue, and later places arrive decided. Returns item id -> review written."""
    if not item.sha256:
        return {}
    values = {
        "decision": review.new_decision,
        "verdict": review.verdict,
        "review_id": review.id,
        "item_id": item.id,
        "reviewer": review.reviewer,
        "decided_at": review.created_at or utcnow(),
    }
    db.execute(delete(ContentDecision).where(ContentDecision.sha256 == item.sha256))
    db.add(ContentDecision(sha256=item.sha256, **values))
    others = db.scalars(select(Item).where(Item.sha256 == item.sha256, Item.id != item.id).order_by(Item.id))
    written = {
        other.id: _append(db, other, review.reviewer, review.verdict, review.new_decision, item.id) for other in others
    }
    db.flush()
    refresh_contents(db.connection(), [item.sha256])
    return written


def content_decision(db: Session, sha256: str | None) -> ContentDecision | None:
    return db.get(ContentDecision, sha256) if sha256 else None


def places(db: Session, sha256: str, limit: int = 5) -> list[tuple[int, str]]:
    """The first places (item id, uri) of a queued content."""
    stmt = (
        select(QueuePlace.item_id, QueuePlace.uri)
        .where(QueuePlace.sha256 == sha256)
        .order_by(QueuePlace.item_id)
        .limit(limit)
    )
    return [(int(i), str(u)) for i, u in db.execute(stmt)]


def analyze(conn: Connection) -> None:
    """Planner statistics for the queue tables after a bulk write."""
    for table in ("queue_contents", "queue_facets", "queue_places", "content_decisions"):
        conn.exec_driver_sql(f"ANALYZE {table}")

"""Read-side queries of the review UI: the queue, one item with its results and history.

Fired classes and tags live in JSON columns; the few dialect-specific bits (expanding a
JSON array in SQL) are confined to `_json_elements`, for SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import ColumnElement, Float, Select, and_, case, cast, exists, func, select, true
from sqlalchemy.orm import Session

from moderator.store.tables import Item, ItemSubmission, Result, Review
from moderator.types import Action

FLAGGED = (Action.REVIEW.value, Action.BLOCK.value)


MAX_NAME = 128  # policy, class and tag names
MAX_URI = 4096
MAX_PAGE = 1_000_000


class QueueFilters(BaseModel):
    """What the queue shows: unreviewed items whose decision is review or block.

    Also the query parameters of /queue and /api/queue (``class`` for `cls`); an empty
    value, as a form sends it, means no filter.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    decision: Action | None = Field(default=None, description="review or block (both when empty).")
    policy: str | None = Field(default=None, max_length=MAX_NAME, description="Only items where this policy fired.")
    cls: str | None = Field(
        default=None, alias="class", max_length=MAX_NAME, description="Only items where a class of this name fired."
    )
    tag: str | None = Field(default=None, max_length=MAX_NAME, description="Only items carrying this tag.")
    source: str | None = Field(
        default=None, max_length=MAX_URI, description="Only items whose uri starts with this prefix."
    )
    since: datetime | None = Field(default=None, description="Updated at or after.")
    until: datetime | None = Field(default=None, description="Updated before.")
    min_score: float | None = Field(default=None, ge=0, le=1, description="Top fired score at least this.")
    max_score: float | None = Field(default=None, ge=0, le=1, description="Top fired score at most this.")
    page: int = Field(default=1, ge=1, le=MAX_PAGE)
    per_page: int = Field(default=50, ge=1, le=500)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_no_filter(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data


@dataclass(frozen=True)
class QueueRow:
    id: int
    uri: str
    sha256: str | None
    decision: str
    top_score: float | None
    fired: list[str]  # "policy/class" of the classes that fired review or block
    updated_at: datetime


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _json_elements(db: Session, column: Any, *keys: str) -> tuple[Any, list[ColumnElement[Any]]]:
    """A table of the elements of a JSON array column, and accessors for `keys` (or the value)."""
    if db.get_bind().dialect.name == "postgresql":
        if not keys:
            texts = func.jsonb_array_elements_text(column).table_valued("value").alias()
            return texts, [texts.c.value]
        elems = func.jsonb_array_elements(column).table_valued("value").alias()
        return elems, [elems.c.value.op("->>")(k) for k in keys]
    elems = func.json_each(column).table_valued("value").alias()
    if not keys:
        return elems, [elems.c.value]
    return elems, [func.json_extract(elems.c.value, f"$.{k}") for k in keys]


def _fired(db: Session, filters: QueueFilters) -> tuple[Any, ColumnElement[Any], ColumnElement[Any], Any]:
    elems, (name, score, action) = _json_elements(db, Result.fired, "name", "score", "action")
    conds = [Result.item_id == Item.id, action.in_(FLAGGED)]
    if filters.policy:
        conds.append(Result.policy == filters.policy)
    if filters.cls:
        conds.append(name == filters.cls)
    return elems, and_(*conds), cast(score, Float), name


def _queue_query(db: Session, filters: QueueFilters) -> Select[Any]:
    elems, cond, score, _ = _fired(db, filters)
    top = select(func.max(score)).select_from(Result).join(elems, true()).where(cond).scalar_subquery()
    reviewed = exists().where(
        Review.item_uri == Item.uri, (Review.item_sha256 == Item.sha256) | Review.item_sha256.is_(None)
    )
    query = select(Item.id, top.label("top")).where(~reviewed)
    query = query.where(Item.decision == filters.decision if filters.decision else Item.decision.in_(FLAGGED))
    if filters.policy or filters.cls:
        query = query.where(exists(select(1).select_from(Result).join(elems, true()).where(cond)))
    if filters.tag:
        tags, (tag,) = _json_elements(db, Result.tags)
        query = query.where(
            exists(
                select(1).select_from(Result).join(tags, true()).where(Result.item_id == Item.id, tag == filters.tag)
            )
        )
    if filters.source:
        query = query.where(Item.uri.startswith(filters.source, autoescape=True))
    if filters.since:
        query = query.where(Item.updated_at >= filters.since)
    if filters.until:
        query = query.where(Item.updated_at < filters.until)
    if filters.min_score is not None:
        query = query.where(top >= filters.min_score)
    if filters.max_score is not None:
        query = query.where(top <= filters.max_score)
    return query


def queue(db: Session, filters: QueueFilters) -> QueuePage:
    """Unreviewed flagged items, most severe first, then highest score."""
    base = _queue_query(db, filters).subquery()
    total = db.scalar(select(func.count()).select_from(base)) or 0
    severity = case((Item.decision == Action.BLOCK.value, 0), else_=1)
    ids = db.execute(
        select(Item, base.c.top)
        .join(base, base.c.id == Item.id)
        .order_by(severity, base.c.top.desc().nulls_last(), Item.id)
        .offset((filters.page - 1) * filters.per_page)
        .limit(filters.per_page)
    ).all()
    results = results_of(db, [item.id for item, _ in ids])
    rows = [
        QueueRow(
            id=item.id,
            uri=item.uri,
            sha256=item.sha256,
            decision=str(item.decision),
            top_score=top,
            fired=flagged_labels(results.get(item.id, [])),
            updated_at=item.updated_at,
        )
        for item, top in ids
    ]
    return QueuePage(rows, total, filters.page, filters.per_page)


def results_of(db: Session, item_ids: list[int]) -> dict[int, list[Result]]:
    found: dict[int, list[Result]] = {}
    if item_ids:
        for r in db.scalars(select(Result).where(Result.item_id.in_(item_ids)).order_by(Result.policy)):
            found.setdefault(r.item_id, []).append(r)
    return found


def flagged(results: list[Result]) -> list[tuple[str, str]]:
    """(policy, class) of every class that fired review or block."""
    return [(r.policy, f["name"]) for r in results for f in r.fired if f.get("action") in FLAGGED]


def flagged_labels(results: list[Result]) -> list[str]:
    return [f"{p}/{c}" for p, c in flagged(results)]


def find_items(
    db: Session, uri: str | None = None, sha256: str | None = None, submitted_by: int | None = None
) -> list[Item]:
    """Items by uri or sha256; with `submitted_by` (a user id) only those that user sent to /api/moderate."""
    query = select(Item).order_by(Item.id).limit(100)
    if submitted_by is not None:
        sent = select(ItemSubmission.id).where(
            ItemSubmission.item_id == Item.id, ItemSubmission.user_id == submitted_by
        )
        query = query.where(exists(sent))
    if uri is not None:
        query = query.where(Item.uri == uri)
    if sha256 is not None:
        query = query.where(Item.sha256 == sha256.lower())
    return list(db.scalars(query))


def submitted_id(db: Session, item_id: int, user_id: int) -> str | None | bool:
    """The external_id `user_id` sent item `item_id` with (None: sent without one); False: never sent it."""
    row = db.execute(
        select(ItemSubmission.external_id).where(ItemSubmission.item_id == item_id, ItemSubmission.user_id == user_id)
    ).first()
    return False if row is None else row[0]


def resolve_item(db: Session, ref: str) -> Item | None:
    """An item by id, uri or sha256 (the first one stored with that content)."""
    if ref.isdigit() and (item := db.get(Item, int(ref))) is not None:
        return item
    found = find_items(db, uri=ref) or (find_items(db, sha256=ref) if len(ref) == 64 else [])
    return found[0] if found else None


def history(db: Session, uri: str) -> list[Review]:
    """Every review of the item, newest first: the first one is its current state."""
    return list(db.scalars(select(Review).where(Review.item_uri == uri).order_by(Review.id.desc())))


def audit(db: Session, page: int, per_page: int = 100) -> list[Review]:
    query = select(Review).order_by(Review.id.desc()).offset((page - 1) * per_page).limit(per_page)
    return list(db.scalars(query))


def queue_size(db: Session) -> int:
    count: int | None = db.scalar(select(func.count()).select_from(_queue_query(db, QueueFilters()).subquery()))
    return count or 0

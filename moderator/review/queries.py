"""Read-side queries of the review UI: the queue, one item with its results and history.

The queue reads the tables store/queue_index.py keeps with the results: one row per flagged,
undecided content (sha256) with its sort key in a composite index, one row per filter value
(policy, class, policy/class, tag) with a copy of that key, and the places of each content.
Every page is an index range read by key (the `after` cursor); `page` alone still works
(an OFFSET along the same index, for the first pages). The total is counted exactly up to
COUNT_CAP (PROBED_COUNT_CAP where each counted row needs a probe: source, dates, two facets)
and reported as "N+" beyond (`total_capped`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import ColumnElement, FromClause, Select, exists, func, select, tuple_
from sqlalchemy.orm import Session

from moderator.store.queue_index import SEVERITIES, QueueContent, QueueFacet, QueuePlace
from moderator.store.tables import Item, ItemSubmission, Result, Review, table_of
from moderator.types import Action

FLAGGED = (Action.REVIEW.value, Action.BLOCK.value)


MAX_NAME = 128  # policy, class and tag names
MAX_URI = 4096
MAX_PAGE = 1_000_000
COUNT_CAP = 10_000  # counted exactly up to here; beyond, "10,000+"
PROBED_COUNT_CAP = 1_000  # the same where each row needs a probe (source, dates, a second facet)
SOURCE_DRIVE = 10_000  # a source prefix with at most this many places is read from the places index
PLACES_SHOWN = 5
# severity _ top score as Python writes a float (repr) _ item id; anything else is a 422, not a 500.
CURSOR = r"^[23]_-?[0-9]{1,17}(\.[0-9]{1,17})?([eE][+-]?[0-9]{1,3})?_[0-9]{1,18}$"
_LAST = "\U0010ffff"  # after every character: [prefix, prefix + _LAST) is the prefix's range


class QueueFilters(BaseModel):
    """What the queue shows: contents flagged review or block that no reviewer decided yet.

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
        default=None, max_length=MAX_URI, description="Only contents with a place whose uri starts with this prefix."
    )
    since: datetime | None = Field(default=None, description="Updated at or after.")
    until: datetime | None = Field(default=None, description="Updated before.")
    min_score: float | None = Field(default=None, ge=0, le=1, description="Top fired score at least this.")
    max_score: float | None = Field(default=None, ge=0, le=1, description="Top fired score at most this.")
    after: str | None = Field(
        default=None, pattern=CURSOR, description="The next_cursor of the previous page: the page after it, by key."
    )
    page: int = Field(default=1, ge=1, le=MAX_PAGE, description="Page number (an offset when no cursor is given).")
    per_page: int = Field(default=50, ge=1, le=500)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_no_filter(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    def query_string(self, **changes: Any) -> str:
        """These filters as a query string, with some values changed (None drops one)."""
        values = {**self.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True), **changes}
        return urlencode(
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items() if v is not None}
        )


@dataclass(frozen=True)
class Place:
    item_id: int
    uri: str
    kind: str  # file, archive, s3, upload


@dataclass(frozen=True)
class QueueRow:
    """One content: its representative item (id, uri) and where else it appears."""

    id: int
    uri: str
    sha256: str | None
    decision: str
    top_score: float | None
    fired: list[str]  # "policy/class" of the classes that fired review or block
    updated_at: datetime
    places: int = 1  # how many items hold these bytes
    place_list: list[Place] = field(default_factory=list)  # the first PLACES_SHOWN of them


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    total: int
    page: int
    per_page: int
    total_capped: bool = False  # total is the cap: there are at least that many
    next_cursor: str | None = None

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def place_kind(uri: str) -> str:
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith("upload:"):
        return "upload"
    return "archive" if "#" in uri else "file"


@dataclass(frozen=True)
class _Cursor:
    severity: int
    top: float
    item_id: int

    @classmethod
    def parse(cls, text: str) -> _Cursor:
        severity, top, item_id = text.split("_")
        return cls(int(severity), float(top), int(item_id))

    @staticmethod
    def of(severity: int, top: float, item_id: int) -> str:
        return f"{severity}_{float(top)!r}_{item_id}"


def _facets(f: QueueFilters) -> list[str]:
    found = []
    if f.policy and f.cls:
        found.append(f"pc:{f.policy}/{f.cls}")
    elif f.policy:
        found.append(f"p:{f.policy}")
    elif f.cls:
        found.append(f"c:{f.cls}")
    if f.tag:
        found.append(f"t:{f.tag}")
    return found


def _source(db: Session, prefix: str, sha: Any) -> ColumnElement[bool] | None:
    """The source filter: a rare prefix as the contents its places name (a range of the places
    index), a common one as a probe per queued row (which then finds a page within few rows)."""
    places = table_of(QueuePlace)
    in_range = (places.c.uri >= prefix) & (places.c.uri < prefix + _LAST)
    some = select(places.c.item_id).where(in_range).limit(SOURCE_DRIVE + 1).subquery()
    found = int(db.scalar(select(func.count()).select_from(some)) or 0)
    if found == 0:
        return None
    if found <= SOURCE_DRIVE:
        return sha.in_(select(places.c.sha256).where(in_range))
    return exists().where(places.c.sha256 == sha, in_range)


def _where(db: Session, f: QueueFilters) -> tuple[FromClause, list[ColumnElement[bool]]] | None:
    """The index to read (contents, or one filter value's rows) and the other conditions; None: no match."""
    contents = table_of(QueueContent)
    facets = _facets(f)
    src: FromClause = table_of(QueueFacet).alias("f0") if facets else contents
    conds: list[ColumnElement[bool]] = []
    if facets:
        conds.append(src.c.facet == facets[0])
        for i, other in enumerate(facets[1:], 1):
            more = table_of(QueueFacet).alias(f"f{i}")
            conds.append(exists().where(more.c.facet == other, more.c.sha256 == src.c.sha256))
    if f.min_score is not None:
        conds.append(src.c.top_score >= f.min_score)
    if f.max_score is not None:
        conds.append(src.c.top_score <= f.max_score)
    if f.since or f.until:
        dated = select(contents.c.sha256).where(contents.c.sha256 == src.c.sha256)
        if f.since:
            dated = dated.where(contents.c.updated_at >= f.since)
        if f.until:
            dated = dated.where(contents.c.updated_at < f.until)
        conds.append(dated.exists())
    if f.source:
        cond = _source(db, f.source, src.c.sha256)
        if cond is None:
            return None
        conds.append(cond)
    return src, conds


def _severities(f: QueueFilters) -> tuple[int, ...]:
    return (f.decision.severity,) if f.decision else SEVERITIES


def _select(cols: tuple[Any, ...]) -> Select[Any]:
    return select(*cols)


def _keys(db: Session, f: QueueFilters, src: FromClause, conds: list[ColumnElement[bool]]) -> list[Any]:
    """(sha256, severity, top_score, item_id) of the page: per severity one backward index range."""
    cols = (src.c.sha256, src.c.severity, src.c.top_score, src.c.item_id)
    if f.after is None and f.page > 1:  # an offset along the same index: fine for the first pages
        query = _select(cols).where(*conds, src.c.severity.in_(_severities(f)))
        query = query.order_by(src.c.severity.desc(), src.c.top_score.desc(), src.c.item_id.desc())
        return list(db.execute(query.offset((f.page - 1) * f.per_page).limit(f.per_page)))
    after = _Cursor.parse(f.after) if f.after else None
    rows: list[Any] = []
    for severity in _severities(f):
        if after is not None and severity > after.severity:
            continue
        query = _select(cols).where(*conds, src.c.severity == severity)
        if after is not None and severity == after.severity:
            key = tuple_(src.c.top_score, src.c.item_id)
            query = query.where(key < tuple_(after.top, after.item_id))
        query = query.order_by(src.c.top_score.desc(), src.c.item_id.desc()).limit(f.per_page - len(rows))
        rows += db.execute(query).all()
        if len(rows) >= f.per_page:
            break
    return rows


def _cap(f: QueueFilters) -> int:
    return PROBED_COUNT_CAP if f.source or f.since or f.until or len(_facets(f)) > 1 else COUNT_CAP


def _count(db: Session, f: QueueFilters, src: FromClause, conds: list[ColumnElement[bool]]) -> int:
    capped = select(src.c.sha256).where(*conds, src.c.severity.in_(_severities(f))).limit(_cap(f) + 1)
    return int(db.scalar(select(func.count()).select_from(capped.subquery())) or 0)


def queue(db: Session, filters: QueueFilters) -> QueuePage:
    """Undecided flagged contents, most severe first, then highest score, then newest."""
    where = _where(db, filters)
    if where is None:
        return QueuePage([], 0, filters.page, filters.per_page)
    keys = _keys(db, filters, *where)
    total = _count(db, filters, *where)
    rows = _rows(db, [k.sha256 for k in keys])
    last = keys[-1] if len(keys) == filters.per_page else None
    return QueuePage(
        rows,
        min(total, _cap(filters)),
        filters.page,
        filters.per_page,
        total_capped=total > _cap(filters),
        next_cursor=_Cursor.of(last.severity, last.top_score, last.item_id) if last is not None else None,
    )


def _fired_labels(db: Session, shas: list[str]) -> dict[str, list[str]]:
    """ "policy/class" that fired review or block at any place of each content (its pc: facets)."""
    facets = table_of(QueueFacet)
    rows = db.execute(
        select(facets.c.sha256, facets.c.facet).where(
            facets.c.sha256.in_(shas), facets.c.facet >= "pc:", facets.c.facet < "pc;"
        )
    )
    found: dict[str, list[str]] = {}
    for sha, facet in sorted(rows, key=lambda r: (r[0], r[1])):
        found.setdefault(sha, []).append(facet[3:])
    return found


def _places(db: Session, c: QueueContent, uri: str) -> list[Place]:
    if c.items == 1:  # most contents: the one place is the representative
        return [Place(c.item_id, uri, place_kind(uri))]
    places = table_of(QueuePlace)
    shown = db.execute(
        select(places.c.item_id, places.c.uri)
        .where(places.c.sha256 == c.sha256)
        .order_by(places.c.item_id)
        .limit(PLACES_SHOWN)
    )
    return [Place(int(i), str(u), place_kind(str(u))) for i, u in shown]


def _rows(db: Session, shas: list[str]) -> list[QueueRow]:
    if not shas:
        return []
    stmt = select(QueueContent, Item.uri).join(Item, Item.id == QueueContent.item_id)
    found = {c.sha256: (c, uri) for c, uri in db.execute(stmt.where(QueueContent.sha256.in_(shas)))}
    fired = _fired_labels(db, list(found))
    rows = []
    for sha in shas:
        if sha not in found:  # decided since the keys were read
            continue
        c, uri = found[sha]
        rows.append(
            QueueRow(
                id=c.item_id,
                uri=uri,
                sha256=c.sha256,
                decision=c.decision,
                top_score=c.top_score,
                fired=fired.get(sha, []),
                updated_at=c.updated_at,
                places=c.items,
                place_list=_places(db, c, uri),
            )
        )
    return rows


def results_of(db: Session, item_ids: list[int]) -> dict[int, list[Result]]:
    found: dict[int, list[Result]] = {}
    if item_ids:
        # Sorted here: ORDER BY policy in SQL lets SQLite read the policy index, every result in the store.
        rows = db.scalars(select(Result).where(Result.item_id.in_(item_ids)))
        for r in sorted(rows, key=lambda r: (r.item_id, r.policy)):
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
    """Contents waiting (exact: a count of the queue table, for the metrics)."""
    return int(db.scalar(select(func.count()).select_from(QueueContent)) or 0)

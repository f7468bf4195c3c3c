"""Streaming export: one query (items left-joined to their results), grouped per item."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Row, Select, exists, func, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from moderator.store.tables import Item, Result, Review
from moderator.types import Action, ItemStatus


class ExportFilters(BaseModel):
    """Which items `Store.iter_export` yields; every filter given must match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decision: Action | None = None
    status: ItemStatus | None = None
    tag: str | None = None  # a tag name in any policy's tags
    policy: str | None = None  # items with a stored result of this policy (rows still carry all policies)
    uri_prefix: str | None = None
    updated_since: datetime | None = None  # inclusive
    updated_until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class ExportRow:
    """One item with every policy's verdict on it."""

    uri: str
    sha256: str | None
    size: int | None
    status: ItemStatus
    error: str | None
    decision: Action | None
    tags: list[str]  # sorted union over policies
    flags: list[str]  # "policy/class" for every class that fired review or block
    scores: dict[str, dict[str, float]]  # policy -> class -> score
    policy_versions: dict[str, str]  # policy -> version
    model_ids: dict[str, str]  # policy -> model id
    actions: dict[str, Action]  # policy -> that policy's action
    meta: dict[str, Any]
    updated_at: datetime
    # issue 14 (B): the evidence of what fired, and the human verdict (the latest review) beside the
    # pipeline's decision. current_decision: the reviewer's when reviewed, else the pipeline's.
    fired: list[dict[str, Any]] = field(default_factory=list)  # {policy, name, action, score, threshold, evidence}
    current_decision: str | None = None
    review_verdict: str | None = None  # confirm, dismiss, relabel
    review_decision: str | None = None
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    review_labels: list[str] = field(default_factory=list)


def _conditions(filters: ExportFilters, dialect: str) -> list[ColumnElement[bool]]:
    # Subqueries use their own alias of results: the outer query joins results too,
    # and a plain reference would correlate to that one joined row.
    scored = aliased(Result)
    conds: list[ColumnElement[bool]] = []
    if filters.decision is not None:
        conds.append(Item.decision == filters.decision)
    if filters.status is not None:
        conds.append(Item.status == filters.status)
    if filters.uri_prefix:
        conds.append(Item.uri.startswith(filters.uri_prefix, autoescape=True))
    if filters.updated_since is not None:
        conds.append(Item.updated_at >= filters.updated_since)
    if filters.updated_until is not None:
        conds.append(Item.updated_at < filters.updated_until)
    if filters.policy is not None:
        conds.append(exists().where(scored.item_id == Item.id, scored.policy == filters.policy))
    if filters.tag is not None:
        conds.append(exists().where(scored.item_id == Item.id, _has_tag(scored.tags, filters.tag, dialect)))
    return conds


def _has_tag(tags: Any, tag: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return type_coerce(tags, JSONB).contains([tag])
    members = func.json_each(tags).table_valued("value")
    return exists(select(members.c.value).where(members.c.value == tag))


def export_query(filters: ExportFilters, dialect: str) -> Select[Any]:
    # The latest review of each uri, joined in the same query (no query per item).
    latest = select(Review.item_uri, func.max(Review.id).label("review_id")).group_by(Review.item_uri).subquery()
    review = aliased(Review)
    return (
        select(
            Item.id,
            Item.uri,
            Item.sha256,
            Item.size,
            Item.status,
            Item.error,
            Item.decision,
            Item.meta,
            Item.updated_at,
            Result.policy,
            Result.policy_version,
            Result.model_id,
            Result.action,
            Result.scores,
            Result.fired,
            Result.tags,
            review.verdict.label("review_verdict"),
            review.new_decision.label("review_decision"),
            review.reviewer.label("reviewer"),
            review.created_at.label("reviewed_at"),
            review.labels.label("review_labels"),
        )
        .outerjoin(Result, Result.item_id == Item.id)
        .outerjoin(latest, latest.c.item_uri == Item.uri)
        .outerjoin(review, review.id == latest.c.review_id)
        .where(*_conditions(filters, dialect))
        .order_by(Item.id, Result.policy)
    )


def shape_row(rows: Sequence[Row[Any]]) -> ExportRow:
    """One item's joined rows (one per policy result, or one with no result) -> ExportRow."""
    first = rows[0]
    scored = [r for r in rows if r.policy is not None]
    tags: set[str] = set()
    flags: list[str] = []
    for r in scored:
        tags.update(r.tags)
        severe = (f["name"] for f in r.fired if Action(f["action"]).severity >= Action.REVIEW.severity)
        flags.extend(f"{r.policy}/{name}" for name in severe)
    return ExportRow(
        uri=first.uri,
        sha256=first.sha256,
        size=first.size,
        status=first.status,
        error=first.error,
        decision=first.decision,
        tags=sorted(tags),
        flags=flags,
        scores={r.policy: dict(r.scores) for r in scored},
        policy_versions={r.policy: r.policy_version for r in scored},
        model_ids={r.policy: r.model_id for r in scored},
        actions={r.policy: r.action for r in scored},
        meta=dict(first.meta or {}),
        updated_at=first.updated_at,
        fired=[{"policy": r.policy, **f} for r in scored for f in r.fired],
        current_decision=first.review_decision or (first.decision.value if first.decision else None),
        review_verdict=first.review_verdict,
        review_decision=first.review_decision,
        reviewer=first.reviewer,
        reviewed_at=first.reviewed_at,
        review_labels=list(first.review_labels or []),
    )


def iter_export(session: Session, filters: ExportFilters, batch: int = 1000) -> Iterator[ExportRow]:
    dialect = session.get_bind().dialect.name
    stmt = export_query(filters, dialect).execution_options(yield_per=batch)
    for _, rows in groupby(session.execute(stmt), key=lambda r: r.id):
        yield shape_row(list(rows))

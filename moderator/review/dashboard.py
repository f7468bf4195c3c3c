"""The dashboard's figures, computed from the store: the queue, the reviewers, the policies.

Every count is aggregated in SQL: the queue from the indexed queue (store.queue_index: one row
per waiting content, as the queue page counts), the daily counts over indexed timestamps in a
bounded window of days (UTC). Only the policy calibration reads rows, one per reviewer label
(human-made, so few; the newest MAX_LABELS), with the class's score and firing threshold
extracted in SQL, because a threshold for a target precision needs the scores themselves. That
maths is the one of `moderator eval` (engine.evaluate.pr_curve / threshold_for_precision).
Decisions the queue copied to the same content elsewhere (via "content") are not counted as a
reviewer's.

Reviewer labels (store.tables.ReviewLabel) say per content and class whether the class is
right; as for `probe train --from-reviews`, the latest label per (content, policy, class)
counts. A label of a class that fired review or block is a confirmation (positive) or a
dismissal (negative) of what the policy fired: their ratio is the precision reviewers measured.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Float, and_, cast, func, literal_column, or_, select
from sqlalchemy.orm import Session

from moderator.engine.evaluate import pr_curve, threshold_for_precision
from moderator.store.queue_index import CONTENT_VIA, QueueContent, QueueFacet
from moderator.store.tables import Item, Result, Review, ReviewLabel
from moderator.types import Action

FLAGGED = (Action.REVIEW.value, Action.BLOCK.value)
POLICY_FACET = "p:"  # store.queue_index: the facet of a policy that flagged a queued content
MAX_LABELS = 50_000  # the newest labels a calibration reads: bounded time on a huge audit


@dataclass(frozen=True)
class PolicyWaiting:
    policy: str
    block: int
    review: int


@dataclass(frozen=True)
class QueueFigures:
    waiting: dict[str, int]  # decision -> waiting contents (the queue's unit: one per sha256)
    places: int  # the items holding those contents (URIs, archive members, S3 keys, uploads)
    by_policy: list[PolicyWaiting]  # contents waiting per policy that flagged them
    oldest: datetime | None  # when the longest-waiting content was first stored
    arrived: list[int]  # per day of the window: flagged items first stored that day
    decided: list[int]  # per day: reviewer decisions (not those copied to the same content)

    @property
    def total(self) -> int:
        return sum(self.waiting.values())


@dataclass(frozen=True)
class ReviewerFigures:
    name: str
    per_day: list[int]
    verdicts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.per_day)


@dataclass(frozen=True)
class ClassFigures:
    policy: str
    name: str
    confirmed: int  # fired, and the reviewer said it is right
    dismissed: int  # fired, and the reviewer said it is wrong
    missed: int  # did not fire, and the reviewer said it is right
    fires_at: float | None  # the lowest threshold seen firing it (review or block)
    suggested: float | None  # the lowest threshold reaching the target on the reviewed items
    curve: list[tuple[float, float]] = field(default_factory=list)  # (threshold, precision), descending

    @property
    def precision(self) -> float | None:
        judged = self.confirmed + self.dismissed
        return self.confirmed / judged if judged else None


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    days: list[date]
    target: float
    queue: QueueFigures
    reviewers: list[ReviewerFigures]
    classes: list[ClassFigures]


def compute(db: Session, *, days: int = 30, target: float = 0.9, now: datetime | None = None) -> Dashboard:
    """Every figure of the dashboard over the last `days` days (today included)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    window = [now.date() - timedelta(days=days - 1 - i) for i in range(days)]
    since = datetime.combine(window[0], time(), UTC)
    return Dashboard(
        now=now,
        days=window,
        target=target,
        queue=queue_figures(db, window, since),
        reviewers=reviewer_figures(db, window, since),
        classes=class_figures(db, target),
    )


def _day(db: Session, column: Any) -> ColumnElement[str]:
    """The UTC day of a timestamp as 'YYYY-MM-DD' (SQLite stores naive UTC; PostgreSQL timestamptz)."""
    if db.get_bind().dialect.name == "postgresql":
        # Constants as literals: GROUP BY must repeat the select's expression, bound parameters would differ.
        return func.to_char(func.timezone(literal_column("'UTC'"), column), literal_column("'YYYY-MM-DD'"))
    return func.strftime(literal_column("'%Y-%m-%d'"), column)


def _per_day(rows: Any, window: list[date]) -> list[int]:
    counts = {str(day): int(n) for day, n in rows}
    return [counts.get(d.isoformat(), 0) for d in window]


def queue_figures(db: Session, window: list[date], since: datetime) -> QueueFigures:
    """The queue as the queue page shows it: the indexed queue of store.queue_index, whose rows are
    the waiting contents only (so these aggregates read the queue, never every item)."""
    waiting: dict[str, int] = {"block": 0, "review": 0}
    places = 0
    for decision, n, held in db.execute(
        select(QueueContent.decision, func.count(), func.sum(QueueContent.items)).group_by(QueueContent.decision)
    ):
        waiting[str(decision)] = int(n)
        places += int(held or 0)
    # Waiting since its representative place was first stored (a rescan does not make it younger).
    oldest = db.scalar(select(func.min(Item.created_at)).join(QueueContent, QueueContent.item_id == Item.id))
    policies: dict[str, dict[int, int]] = defaultdict(dict)
    for facet, severity, n in db.execute(
        select(QueueFacet.facet, QueueFacet.severity, func.count())
        .where(QueueFacet.facet.startswith(POLICY_FACET, autoescape=True))
        .group_by(QueueFacet.facet, QueueFacet.severity)
    ):
        policies[facet[len(POLICY_FACET) :]][int(severity)] = int(n)
    # created_at has no index, updated_at has: an item first stored in the window was updated in it too.
    arrived = db.execute(
        select(_day(db, Item.created_at), func.count())
        .where(Item.updated_at >= since, Item.created_at >= since, Item.decision.in_(FLAGGED))
        .group_by(_day(db, Item.created_at))
    ).all()
    decided = db.execute(
        select(_day(db, Review.created_at), func.count())
        .where(Review.created_at >= since, Review.via != CONTENT_VIA)
        .group_by(_day(db, Review.created_at))
    ).all()
    block, review = Action.BLOCK.severity, Action.REVIEW.severity
    return QueueFigures(
        waiting=waiting,
        places=places,
        by_policy=sorted(
            (PolicyWaiting(p, c.get(block, 0), c.get(review, 0)) for p, c in policies.items()),
            key=lambda w: (-(w.block + w.review), w.policy),
        ),
        oldest=oldest,
        arrived=_per_day(arrived, window),
        decided=_per_day(decided, window),
    )


def reviewer_figures(db: Session, window: list[date], since: datetime) -> list[ReviewerFigures]:
    day = _day(db, Review.created_at)
    per_day: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for reviewer, d, n in db.execute(
        select(Review.reviewer, day, func.count())
        .where(Review.created_at >= since, Review.via != CONTENT_VIA)
        .group_by(Review.reviewer, day)
    ):
        per_day[reviewer].append((d, n))
    verdicts: dict[str, dict[str, int]] = defaultdict(dict)
    for reviewer, verdict, n in db.execute(
        select(Review.reviewer, Review.verdict, func.count())
        .where(Review.created_at >= since, Review.via != CONTENT_VIA)
        .group_by(Review.reviewer, Review.verdict)
    ):
        verdicts[reviewer][verdict] = int(n)
    out = [ReviewerFigures(name, _per_day(rows, window), verdicts[name]) for name, rows in per_day.items()]
    return sorted(out, key=lambda r: (-r.total, r.name))


def _label_score_and_band(db: Session) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """In SQL, the labelled class's score in the result and the lowest threshold at which the result
    fired it review or block (NULL: it did not): two numbers per row instead of two JSON documents."""
    flagged = ", ".join(f"'{a}'" for a in FLAGGED)
    score: ColumnElement[Any]
    band: ColumnElement[Any]
    if db.get_bind().dialect.name == "postgresql":
        score = cast(Result.scores.op("->>")(ReviewLabel.label), Float)
        band = literal_column(
            "(SELECT min((f->>'threshold')::float) FROM jsonb_array_elements(results.fired) AS f "
            f"WHERE f->>'name' = review_labels.label AND f->>'action' IN ({flagged}))"
        )
    else:
        score = func.json_extract(Result.scores, literal_column("'$.'").op("||")(func.json_quote(ReviewLabel.label)))
        band = literal_column(
            "(SELECT min(json_extract(f.value, '$.threshold')) FROM json_each(results.fired) AS f "
            f"WHERE json_extract(f.value, '$.name') = review_labels.label "
            f"AND json_extract(f.value, '$.action') IN ({flagged}))"
        )
    return score, band


def class_figures(db: Session, target: float) -> list[ClassFigures]:
    """Per (policy, class) reviewers labelled: what they confirmed and dismissed of what it fired, and
    the threshold that would have reached `target` precision on the reviewed items (current scores)."""
    score, band = _label_score_and_band(db)
    newest = (
        select(ReviewLabel.sha256, Review.item_uri, ReviewLabel.label, ReviewLabel.positive, Result.policy, score, band)
        .join(Review, Review.id == ReviewLabel.review_id)
        .join(Item, Item.uri == Review.item_uri)
        # A label without a policy counts for a class of that name in any policy (as probes_data).
        .join(
            Result,
            and_(Result.item_id == Item.id, or_(Result.policy == ReviewLabel.policy, ReviewLabel.policy.is_(None))),
        )
        .order_by(ReviewLabel.id.desc())
        .limit(MAX_LABELS)
    )
    latest: dict[tuple[str, str, str], tuple[float, bool, float | None]] = {}
    for sha, uri, label, positive, policy, value, threshold in db.execute(newest):
        key = (sha or uri, policy, label)
        if key in latest or value is None:
            continue  # newest first: an older label of the same content and class is superseded
        latest[key] = (float(value), bool(positive), None if threshold is None else float(threshold))
    grouped: dict[tuple[str, str], list[tuple[float, bool, float | None]]] = defaultdict(list)
    for (_, policy, label), row in latest.items():
        grouped[(policy, label)].append(row)
    return [_class(policy, name, rows, target) for (policy, name), rows in sorted(grouped.items())]


def _class(policy: str, name: str, rows: list[tuple[float, bool, float | None]], target: float) -> ClassFigures:
    scores = np.array([s for s, _, _ in rows], np.float64)
    positive = np.array([p for _, p, _ in rows], bool)
    fired = np.array([t is not None for _, _, t in rows], bool)
    curve = pr_curve(scores, positive)
    bands = [t for _, _, t in rows if t is not None]
    return ClassFigures(
        policy=policy,
        name=name,
        confirmed=int((fired & positive).sum()),
        dismissed=int((fired & ~positive).sum()),
        missed=int((~fired & positive).sum()),
        fires_at=min(bands) if bands else None,
        suggested=threshold_for_precision(curve, target),
        curve=[(float(t), float(p)) for t, p in zip(curve.thresholds, curve.precision, strict=True)],
    )

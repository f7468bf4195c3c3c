"""Reviewer decisions: appended to the audit, turned into training labels.

Verdicts: confirm (the flag was right: the item is blocked), dismiss (it was wrong: the
item is allowed), relabel (these labels are right; the decision stays unless given).
Labels are "policy/class" (or a bare class name). Confirm marks every flagged class
positive, dismiss marks them negative, relabel marks the given labels positive and the
other flagged classes negative: that is what linear probes and calibration learn from.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from moderator.review import queries
from moderator.store import outbox, queue_index
from moderator.store.tables import Item, Review, ReviewLabel, Verdict, utcnow
from moderator.types import Action


class DecisionError(ValueError):
    """A decision that cannot be recorded (no labels to relabel with, unknown item)."""


class DecisionIn(BaseModel):
    """One reviewer decision, as the API and the forms take it."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    labels: list[str] = Field(default_factory=list, description='Labels, "policy/class" or a bare class name.')
    note: str = Field(default="", max_length=2000)
    decision: Action | None = Field(default=None, description="The item's new decision; by default from the verdict.")

    @field_validator("labels")
    @classmethod
    def _clean(cls, labels: list[str]) -> list[str]:
        cleaned = [label.strip() for label in labels if label.strip()]
        if any(len(label) > 128 for label in cleaned):
            raise ValueError("a label has at most 128 characters")
        return list(dict.fromkeys(cleaned))


def parse_labels(text: str) -> list[str]:
    """Labels typed as one comma-separated string."""
    return [part.strip() for part in text.split(",") if part.strip()]


def current_decision(item: Item, latest: Review | None) -> str:
    if latest is not None:
        return latest.new_decision
    return str(item.decision.value if isinstance(item.decision, Action) else item.decision or Action.ALLOW.value)


def new_decision(d: DecisionIn, old: str) -> str:
    if d.decision is not None:
        return d.decision.value
    if d.verdict is Verdict.CONFIRM:
        return Action.BLOCK.value
    if d.verdict is Verdict.DISMISS:
        return Action.ALLOW.value
    return old


def _split(label: str) -> tuple[str | None, str]:
    policy, sep, name = label.partition("/")
    return (policy, name) if sep else (None, label)


def training_labels(d: DecisionIn, flagged: Sequence[tuple[str, str]]) -> list[tuple[str | None, str, bool]]:
    """(policy, class, positive) rows a decision teaches (pure)."""
    if d.verdict is Verdict.CONFIRM:
        return [(p, c, True) for p, c in flagged]
    if d.verdict is Verdict.DISMISS:
        return [(p, c, False) for p, c in flagged]
    given = [_split(label) for label in d.labels]
    named = {c for _, c in given} | {f"{p}/{c}" for p, c in given if p}
    negatives = [(p, c, False) for p, c in flagged if f"{p}/{c}" not in named and c not in named]
    return [(p, c, True) for p, c in given] + negatives


def decide(db: Session, item: Item, d: DecisionIn, reviewer: str, via: str) -> Review:
    """Append one decision on `item` to the audit and make it the decision of its bytes: every
    other place of the content gets a review "same content as item N", later ones arrive
    decided (store/queue_index.propagate). The caller commits."""
    return decide_content(db, item, d, reviewer, via)[0]


def decide_content(db: Session, item: Item, d: DecisionIn, reviewer: str, via: str) -> tuple[Review, dict[int, Review]]:
    """decide, also returning the reviews written for the content's other places (item id -> review)."""
    if d.verdict is Verdict.RELABEL and not d.labels:
        raise DecisionError("relabel needs at least one label")
    results = queries.results_of(db, [item.id]).get(item.id, [])
    flagged = queries.flagged(results)
    past = queries.history(db, item.uri)
    old = current_decision(item, past[0] if past else None)
    labels = [f"{p}/{c}" for p, c in flagged] if d.verdict is Verdict.CONFIRM else d.labels
    review = Review(
        item_uri=item.uri,
        item_sha256=item.sha256,
        reviewer=reviewer,
        via=via,
        verdict=d.verdict.value,
        old_decision=old,
        new_decision=new_decision(d, old),
        labels=labels,
        note=d.note,
        created_at=utcnow(),
    )
    db.add(review)
    db.flush()
    for policy, name, positive in training_labels(d, flagged):
        db.add(ReviewLabel(review_id=review.id, sha256=item.sha256, policy=policy, label=name, positive=positive))
    # Same transaction: review.decided, and item.decided when the current decision changed.
    outbox.record_review(db, item.id, review)
    return review, queue_index.propagate(db, item, review)


def decide_many(db: Session, items: Sequence[Item], d: DecisionIn, reviewer: str, via: str) -> list[Review]:
    """The same decision on several items, in the caller's one transaction; items whose bytes an
    earlier one of them had are decided by it (one review each, never two)."""
    done: dict[int, Review] = {}
    reviews = []
    for item in items:
        if item.id not in done:
            review, others = decide_content(db, item, d, reviewer, via)
            done[item.id] = review
            done.update(others)
        reviews.append(done[item.id])
    return reviews

"""Decisions about decisions: appeals, undo, and adding a blocked content to a hash list.

- Appeals (EU DSA: internal complaint handling, art. 20; statement of reasons, art. 17): the
  platform opens one for an item with the user's statement; a reviewer other than the one who
  made the decision under appeal decides it, upholding or reversing it, with the reasons. The
  decision is a review (via "appeal", through `decisions.decide`), so it is in the item's
  history, the audit and the decision events like any other.
- Undo: a reviewer takes back their own recent decision. The undo is a review too (verdict
  "undo", the decision going back to what it was) and `review_undos` says which one it reverted.
- Hash list: a reviewer's block may add the content to a hash list (sha256 and, when the image
  gives a reliable one, PDQ), each entry's source naming the review, so near-copies are caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from moderator.review import decisions, queries
from moderator.settings import Settings
from moderator.store import outbox, queue_index
from moderator.store.queue_index import ContentDecision
from moderator.store.review_work import Appeal, AppealState, ReviewUndo
from moderator.store.tables import Item, ItemSubmission, Review, ReviewLabel, Verdict, utcnow
from moderator.types import Action

UNDO = "undo"  # the verdict of an undo review
APPEAL_VIA = "appeal"


class WorkError(ValueError):
    """A request that cannot be done as asked; `status` is the HTTP answer it deserves."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# --- appeals -----------------------------------------------------------------------------


class AppealIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statement: str = Field(min_length=1, max_length=10_000, description="The user's statement, in their words.")


class Outcome(StrEnum):
    UPHELD = "upheld"
    REVERSED = "reversed"


class AppealDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Outcome
    reasons: str = Field(
        min_length=1, max_length=10_000, description="The statement of reasons sent back to the platform and the user."
    )
    decision: Action | None = Field(
        default=None,
        description="With `reversed`: the new decision (allow or block; by default the opposite of the current one).",
    )


def open_appeal(db: Session, item: Item, body: AppealIn, opener: str, opener_id: int | None) -> Appeal:
    """A new open appeal against the item's current decision (the caller commits)."""
    if db.scalar(select(Appeal.id).where(Appeal.item_id == item.id, Appeal.state == AppealState.OPEN.value)):
        raise WorkError("this item already has an open appeal")
    past = queries.history(db, item.uri)
    latest = past[0] if past else None
    appeal = Appeal(
        item_id=item.id,
        item_uri=item.uri,
        item_sha256=item.sha256,
        opened_by=opener,
        opened_by_id=opener_id,
        statement=body.statement.strip() or body.statement,
        appealed_review_id=latest.id if latest else None,
        appealed_decision=decisions.current_decision(item, latest),
        appealed_reviewer=latest.reviewer if latest else None,
        state=AppealState.OPEN.value,
    )
    db.add(appeal)
    db.flush()
    return appeal


def decide_appeal(db: Session, appeal: Appeal, body: AppealDecisionIn, reviewer: str) -> Review:
    """Uphold or reverse the decision under appeal, as `reviewer` (never the one who made it)."""
    if appeal.state != AppealState.OPEN.value:
        raise WorkError(f"this appeal was already decided ({appeal.state} by {appeal.decided_by})")
    if appeal.appealed_reviewer is not None and appeal.appealed_reviewer == reviewer:
        raise WorkError(
            f"you made the decision under appeal (review #{appeal.appealed_review_id}): another reviewer must"
            " decide this appeal",
            status=403,
        )
    item = db.get(Item, appeal.item_id)
    if item is None:
        raise WorkError("the appealed item is no longer in the store", status=404)
    past = queries.history(db, item.uri)
    current = decisions.current_decision(item, past[0] if past else None)
    if body.outcome is Outcome.UPHELD:
        new = current
    else:
        default = Action.ALLOW if current in (Action.BLOCK.value, Action.REVIEW.value) else Action.BLOCK
        new = (body.decision or default).value
        if new not in (Action.ALLOW.value, Action.BLOCK.value):
            raise WorkError("a reversed appeal ends in allow or block", status=422)
        if new == current:
            raise WorkError(f"the decision is already {current}: that upholds it", status=422)
    verdict = Verdict.DISMISS if new == Action.ALLOW.value else Verdict.CONFIRM
    d = decisions.DecisionIn(verdict=verdict, decision=Action(new), note=f"appeal #{appeal.id}: {body.reasons}")
    review = decisions.decide(db, item, d, reviewer, APPEAL_VIA)
    appeal.state = AppealState.UPHELD.value if body.outcome is Outcome.UPHELD else AppealState.REVERSED.value
    appeal.decided_by = reviewer
    appeal.decision_review_id = review.id
    appeal.decision = new
    appeal.reasons = body.reasons
    appeal.decided_at = review.created_at or utcnow()
    return review


def visible_to(user_id: int) -> object:
    """The condition for a client: appeals on items it sent to /api/moderate."""
    return exists().where(ItemSubmission.item_id == Appeal.item_id, ItemSubmission.user_id == user_id)


def list_appeals(
    db: Session, state: AppealState | None, client_id: int | None, page: int = 1, per_page: int = 50
) -> tuple[list[Appeal], int]:
    """Appeals, oldest open first (a complaint queue is first come, first served); newest first otherwise."""
    query = select(Appeal)
    if state is not None:
        query = query.where(Appeal.state == state.value)
    if client_id is not None:
        query = query.where(visible_to(client_id))  # type: ignore[arg-type]
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    order = Appeal.id.asc() if state is AppealState.OPEN else Appeal.id.desc()
    rows = db.scalars(query.order_by(order).offset((page - 1) * per_page).limit(per_page))
    return list(rows), total


def appeals_of_item(db: Session, item_id: int) -> list[Appeal]:
    return list(db.scalars(select(Appeal).where(Appeal.item_id == item_id).order_by(Appeal.id.desc())))


def open_count(db: Session) -> int:
    return db.scalar(select(func.count()).where(Appeal.state == AppealState.OPEN.value)) or 0


# --- undo --------------------------------------------------------------------------------


def undone(db: Session, review_ids: list[int]) -> set[int]:
    if not review_ids:
        return set()
    return set(db.scalars(select(ReviewUndo.review_id).where(ReviewUndo.review_id.in_(review_ids))))


def check_undoable(db: Session, review: Review, user: str, is_admin: bool, now: datetime, window: timedelta) -> None:
    """Raises WorkError when `user` may not undo `review` now."""
    if review.verdict == UNDO:
        raise WorkError("an undo cannot be undone: decide the item again")
    if review.via == APPEAL_VIA:
        raise WorkError("an appeal decision is final: the platform may open a new appeal")
    if review.via == queue_index.CONTENT_VIA:
        raise WorkError(f"this review followed a decision on the same content ({review.note}): undo that one")
    if review.reviewer != user and not is_admin:
        raise WorkError("only the reviewer who made a decision (or an admin) may undo it", status=403)
    if not is_admin and now - review.created_at > window:
        raise WorkError(f"too late to undo: decisions can be undone for {int(window.total_seconds())} s")
    if undone(db, [review.id]):
        raise WorkError(f"review #{review.id} was already undone")
    # The item's decision in force: its newest review that is not an undo and was not undone.
    latest = db.scalar(
        select(func.max(Review.id)).where(
            Review.item_uri == review.item_uri,
            Review.verdict != UNDO,
            ~exists().where(ReviewUndo.review_id == Review.id),
        )
    )
    if latest != review.id:
        raise WorkError(f"the item was decided again since review #{review.id}: undo that decision instead")


def undo(db: Session, review: Review, user: str, via: str) -> Review:
    """Append the review that takes `review` back, and the same for the other places of its content
    that the decision reached ("same content as item N"); the content gets its previous reviewer
    decision back (or none: it returns to the queue). The caller checked it may, and commits."""
    item = db.scalar(select(Item).where(Item.uri == review.item_uri))
    if item is None:
        raise WorkError("the item is no longer in the store", status=404)
    back = _undo_one(db, item, review, user, via, f"undo of review #{review.id}")
    _restore_labels(db, review, back)
    if item.sha256:
        for place, reached in _reached(db, item, review):
            _undo_one(db, place, reached, user, via, f"undo of review #{review.id} (same content)")
        _restore_content_decision(db, item.sha256, review)
        queue_index.refresh_contents(db.connection(), [item.sha256])
    return back


def _undo_one(db: Session, item: Item, review: Review, user: str, via: str, note: str) -> Review:
    back = Review(
        item_uri=review.item_uri,
        item_sha256=review.item_sha256,
        reviewer=user,
        via=via,
        verdict=UNDO,
        old_decision=review.new_decision,
        new_decision=review.old_decision,
        labels=[],
        note=note,
        created_at=utcnow(),
    )
    db.add(back)
    db.flush()
    db.add(ReviewUndo(review_id=review.id, undo_review_id=back.id))
    outbox.record_review(db, item.id, back)
    return back


def _reached(db: Session, item: Item, review: Review) -> list[tuple[Item, Review]]:
    """The other places' reviews the decision wrote (then or on their arrival), still their latest."""
    found = []
    rows = db.execute(
        select(Item, Review)
        .join(Review, Review.item_uri == Item.uri)
        .where(
            Item.sha256 == item.sha256,
            Item.id != item.id,
            Review.id > review.id,
            Review.via == queue_index.CONTENT_VIA,
            Review.note == f"same content as item {item.id}",
        )
        .order_by(Review.id)
    ).all()
    latest = _latest_ids(db, [i.uri for i, _ in rows])
    for place, reached in rows:
        if latest.get(place.uri) == reached.id:
            found.append((place, reached))
    return found


def _latest_ids(db: Session, uris: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(uris), 500):
        chunk = list(set(uris[start : start + 500]))
        rows = db.execute(
            select(Review.item_uri, func.max(Review.id)).where(Review.item_uri.in_(chunk)).group_by(Review.item_uri)
        )
        found.update({uri: int(i) for uri, i in rows})
    return found


def _restore_content_decision(db: Session, sha256: str, review: Review) -> None:
    """The content's decision as it was before `review`: the reviewer decision before it that is not
    undone, or none (the content is undecided again)."""
    db.execute(delete(ContentDecision).where(ContentDecision.sha256 == sha256))
    earlier = db.scalar(
        select(Review)
        .where(
            Review.item_sha256 == sha256,
            Review.id < review.id,
            Review.via != queue_index.CONTENT_VIA,
            Review.verdict != UNDO,
            ~exists().where(ReviewUndo.review_id == Review.id),
        )
        .order_by(Review.id.desc())
        .limit(1)
    )
    if earlier is not None:
        origin = db.scalar(select(Item.id).where(Item.uri == earlier.item_uri))
        db.add(
            ContentDecision(
                sha256=sha256,
                decision=earlier.new_decision,
                verdict=earlier.verdict,
                review_id=earlier.id,
                item_id=origin,
                reviewer=earlier.reviewer,
                decided_at=earlier.created_at,
            )
        )
    db.flush()


def _restore_labels(db: Session, review: Review, back: Review) -> None:
    """Training data: the latest label counts (engine.probes_data), so re-append, for every label the
    undone review taught, what the review before it had said; a label nobody had given before keeps
    the undone review's value (the store has no way to un-say it) and is left alone."""
    taught = db.execute(
        select(ReviewLabel.sha256, ReviewLabel.policy, ReviewLabel.label).where(ReviewLabel.review_id == review.id)
    ).all()
    for sha, policy, label in taught:
        earlier = db.scalar(
            select(ReviewLabel.positive)
            .where(
                ReviewLabel.review_id < review.id,
                ReviewLabel.sha256 == sha,
                ReviewLabel.label == label,
                ReviewLabel.policy.is_(None) if policy is None else ReviewLabel.policy == policy,
            )
            .order_by(ReviewLabel.id.desc())
            .limit(1)
        )
        if earlier is not None:
            db.add(ReviewLabel(review_id=back.id, sha256=sha, policy=policy, label=label, positive=earlier))


CHAIN_GAP = timedelta(seconds=0.5)  # reviews of one request (a bulk decision) are written ms apart


def last_decision(db: Session, user: str, now: datetime, window: timedelta) -> list[Review]:
    """The user's last decision, while it can be undone: the reviews of their newest request (one, or
    a bulk decision's: same verdict and note, each written within CHAIN_GAP of the next), those that
    nobody decided again since. Nothing when that newest action was an undo or an appeal decision."""
    if window <= timedelta(0):
        return []
    mine = select(Review).where(Review.reviewer == user, Review.via != queue_index.CONTENT_VIA)
    newest = db.scalar(mine.order_by(Review.id.desc()).limit(1))
    if newest is None or newest.verdict == UNDO or newest.via == APPEAL_VIA or newest.created_at <= now - window:
        return []
    recent = db.scalars(
        mine.where(Review.id <= newest.id, Review.created_at > now - window).order_by(Review.id.desc()).limit(200)
    )
    batch: list[Review] = []
    for r in recent:
        if batch and (
            batch[-1].created_at - r.created_at > CHAIN_GAP
            or (r.verdict, r.note, r.via) != (newest.verdict, newest.note, newest.via)
        ):
            break
        batch.append(r)
    gone = undone(db, [r.id for r in batch])
    latest = _latest_ids(db, [r.item_uri for r in batch])
    return [r for r in batch if r.id not in gone and latest.get(r.item_uri) == r.id]


# --- hash list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    list_path: str
    added: int  # lines written
    present: int  # already in the list
    kinds: list[str]  # the kinds of hash written or present (sha256, pdq)
    pdq_quality: int | None  # None: the image could not be read for a PDQ
    note: str  # why PDQ is missing, when it is


def add_to_hash_list(review: Review, data: bytes | None, settings: Settings, list_name: str | None = None) -> Listed:
    """Add the blocked content of `review` to the hash list (settings.review_hash_list by default):
    sha256 always, PDQ when the bytes decode and give a PDQ of good enough quality. Each entry's
    source is "review:<id>", its label the reviewer and the item's uri."""
    from moderator.hashlists import HashEntry, HashKind, append_entries, image_entries, resolve_list_path

    if review.new_decision != Action.BLOCK.value:
        raise WorkError(f"only a block goes on a hash list; review #{review.id} decided {review.new_decision}")
    if not review.item_sha256:
        raise WorkError("the reviewed item has no sha256 (its bytes were never read)", status=422)
    source = f"review:{review.id}"
    label = f"blocked by {review.reviewer}: {review.item_uri}"[:500]
    entries = [HashEntry(HashKind.SHA256, review.item_sha256, label, source=source)]
    quality: int | None = None
    note = ""
    if data is None:
        note = "no PDQ: the server cannot read the item's bytes now"
    else:
        try:
            found, quality = image_entries(data, settings, (HashKind.PDQ,), label)
        except Exception as e:  # noqa: BLE001 - undecodable or a video: the exact hash is still listed
            found, note = [], f"no PDQ: {type(e).__name__}: {str(e)[:200]}"
        entries += [HashEntry(e.kind, e.value, label, source=source) for e in found]
        if not found and not note:
            note = f"no PDQ: quality {quality} below {settings.hashlist_pdq_min_quality}"
    path = resolve_list_path(list_name or settings.review_hash_list, settings)
    added, present = append_entries(path, entries)
    return Listed(str(path), added, present, [str(e.kind) for e in entries], quality, note)

"""Appeals and review leases (issue 18, migration 0011).

- `review_leases`: who is working on a content (by sha256: one unit of review) until when. No
  background job: a lease whose `expires_at` has passed is free, whatever the row says.
- `appeals`: a platform's complaint about a decision on an item (the user's statement), its own
  queue, and its outcome with the statement of reasons. The decision itself is a `reviews` row
  (via "appeal"), so the outcome is in the item's history and the append-only audit too.
- `review_undos`: which review an undo reverted (the undo is itself a `reviews` row); one undo
  per review at most.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moderator.store.tables import Base, BigId, UTCDateTime, utcnow


class ReviewLease(Base):
    __tablename__ = "review_leases"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))  # the reviewer's user name (as reviews.reviewer)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AppealState(StrEnum):
    OPEN = "open"
    UPHELD = "upheld"  # the decision stands
    REVERSED = "reversed"  # the decision was changed


class Appeal(Base):
    __tablename__ = "appeals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key to items: like the audit, an appeal outlives the item row.
    item_id: Mapped[int] = mapped_column(BigId, index=True)
    item_uri: Mapped[str] = mapped_column(Text)
    item_sha256: Mapped[str | None] = mapped_column(String(64))
    opened_by: Mapped[str] = mapped_column(String(64))  # user name of the platform (client) or admin
    opened_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    statement: Mapped[str] = mapped_column(Text)  # the user's own words
    # The decision under appeal: the item's latest review (None: the pipeline's decision alone).
    appealed_review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"))
    appealed_decision: Mapped[str] = mapped_column(String(16))
    appealed_reviewer: Mapped[str | None] = mapped_column(String(64))  # who may not decide the appeal
    state: Mapped[str] = mapped_column(String(16), default=AppealState.OPEN.value)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decision_review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"))
    decision: Mapped[str | None] = mapped_column(String(16))  # the item's decision after the appeal
    reasons: Mapped[str | None] = mapped_column(Text)  # the statement of reasons (DSA art. 17, 20)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_appeals_state", "state", "id"),)


class ReviewUndo(Base):
    __tablename__ = "review_undos"

    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"), primary_key=True)  # the review undone
    undo_review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"), unique=True)  # the undo's review
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

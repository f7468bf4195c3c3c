"""Ordering state of S3 event notifications (migration 0003).

S3 delivers events at least once and unordered. Per object we keep the highest
sequencer acted upon, so a duplicate or an older event arriving late is dropped.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from moderator.store.base import Base
from moderator.store.tables import UTCDateTime, utcnow


class S3EventState(Base):
    __tablename__ = "s3_event_state"

    bucket: Mapped[str] = mapped_column(String(63), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    # Upper-case hex left-padded to 64 digits: string order is event order (SQL too).
    sequencer: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # events.EventKind value of the last event acted upon
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

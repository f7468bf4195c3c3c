"""The store's tables (SQLAlchemy 2 typed mappings on moderator.store.base.Base).

Any change here needs a new Alembic revision in store/migrations/versions/ (see
the README there); tests/store/test_migrations.py fails when the two disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

from moderator.store.base import Base
from moderator.types import Action, ItemStatus


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite keeps no offset, so values are normalised to UTC on the way in and come
    back aware; comparisons (export since/until) then mean the same everywhere.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _str_enum(enum: type[StrEnum]) -> Enum:
    # Stored as plain VARCHAR(16) holding the value: no native enum type and no CHECK
    # constraint, so adding a member later needs no migration.
    return Enum(
        enum, native_enum=False, create_constraint=False, length=16, values_callable=lambda e: [m.value for m in e]
    )


# JSONB on PostgreSQL (indexable, containment), JSON text elsewhere.
Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    state: Mapped[JobState] = mapped_column(_str_enum(JobState), default=JobState.PENDING)
    targets: Mapped[list[str]] = mapped_column(Json, default=list)
    policies: Mapped[list[str]] = mapped_column(Json, default=list)
    total: Mapped[int | None] = mapped_column(BigInteger)  # None until the sources are counted
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    message: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "created_at"),)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text, unique=True)
    # None when the bytes were never read (skipped before reading, unreadable).
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    fingerprint: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[ItemStatus] = mapped_column(_str_enum(ItemStatus))
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    decision: Mapped[Action | None] = mapped_column(_str_enum(Action), index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Embedding(Base):
    """Image embeddings by content: float16 bytes of a [frames, dim] array (little-endian)."""

    __tablename__ = "embeddings"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Result(Base):
    """One policy's verdict on one item; a rescore replaces the row for that policy."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(BigId, ForeignKey("items.id", ondelete="CASCADE"))
    policy: Mapped[str] = mapped_column(String(255), index=True)
    policy_version: Mapped[str] = mapped_column(String(128))
    scorer: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[str] = mapped_column(String(255))
    action: Mapped[Action] = mapped_column(_str_enum(Action))
    scores: Mapped[dict[str, float]] = mapped_column(Json)  # class -> score in [0, 1]
    fired: Mapped[list[dict[str, Any]]] = mapped_column(Json)  # {name, action, score, threshold, evidence}
    tags: Mapped[list[str]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("item_id", "policy"),)

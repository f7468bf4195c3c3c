"""Every table of the store (SQLAlchemy 2 typed mappings on one declarative Base).

Scan results (jobs, items, embeddings, results), the review UI's users, sessions, tokens
and append-only audit trail, and the ordering state of S3 event notifications.
Any change here needs a new Alembic revision in store/migrations/versions/ (see the
README there); tests/store/test_migrations.py fails when the two disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Dialect,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

from moderator.types import Action, ItemStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# Stored vectors (Embedding.vector) are little-endian float16 whatever the machine.
VECTOR_DTYPE = np.dtype("<f2")


class Base(DeclarativeBase):
    """The one declarative base every table maps onto (Alembic autogenerates from it)."""

    metadata = MetaData(naming_convention=NAMING)


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class (for bulk statements that bypass the ORM)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


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
    # policy -> why it did not run in a worker (e.g. no CLIP weights); None when every policy ran.
    policies_not_run: Mapped[dict[str, str] | None] = mapped_column(Json)

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
    # issue 14 (migration 0005): the machine reason of an error (not_an_image, too_large, ...) and, for
    # items sent to POST /api/moderate, the caller's own id of the last submission (who: ItemSubmission).
    error_reason: Mapped[str | None] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # issue 14 (B, migration 0006): the pipeline decision before its last change, and the item's
    # last decision-event sequence number (store/outbox.py: bumped with each event, never reused).
    previous_decision: Mapped[Action | None] = mapped_column(_str_enum(Action))
    event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Embedding(Base):
    """Image embeddings by content: float16 bytes of a [frames, dim] array (little-endian)."""

    __tablename__ = "embeddings"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # issue 17 (migration 0010): insertion order, so the search index (engine/ann.py) knows what it
    # holds and sees new rows by one index probe. An identity on PostgreSQL; on SQLite a trigger
    # sets it to the rowid (SQLite only auto-increments a primary key).
    seq: Mapped[int] = mapped_column(BigInteger, Identity())

    __table_args__ = (Index(None, "model_id", "seq"),)


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


# -- the batch ledger of queued jobs (migration 0004; the API is in store/batches.py) ---------


class BatchState(StrEnum):
    QUEUED = "queued"  # sent to the broker; its items are not counted yet
    DONE = "done"  # its items are stored and counted in the job
    SPLIT = "split"  # replaced by one-item batches "<id>.<n>" (an item killed the worker)
    FAILED = "failed"  # given up: its items are not recorded, the job says why


class JobBatch(Base):
    __tablename__ = "job_batches"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # the task id
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    queue: Mapped[str] = mapped_column(String(255))
    state: Mapped[BatchState] = mapped_column(_str_enum(BatchState), default=BatchState.QUEUED)
    # The item references as the task carries them; dropped once the batch is done.
    items: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    size: Mapped[int] = mapped_column(Integer)
    sends: Mapped[int] = mapped_column(Integer, default=1)  # publications (1 + re-sends of a lost message)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)  # deliveries at retry number `retry`
    retry: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index(None, "state", "sent_at"),)


# -- the review UI ------------------------------------------------------------------------
# `reviews` and `review_labels` are append-only: the code never updates or deletes them,
# and migration 0002 adds triggers that make the database refuse it too. Items are
# referred to by uri (the store's natural key) and sha256 (the content the reviewer saw),
# so the audit trail outlives re-scans of the same item.


class Role(StrEnum):
    REVIEWER = "reviewer"
    ADMIN = "admin"
    CLIENT = "client"  # a platform: POST /api/moderate and its own items only (issue 14)


class Verdict(StrEnum):
    CONFIRM = "confirm"  # the flag was right
    DISMISS = "dismiss"  # the flag was wrong: the item is allowed
    RELABEL = "relabel"  # the reviewer says which labels are right


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebSession(Base):
    """A logged-in browser: the cookie holds a random token, the row only its sha256."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiToken(Base):
    """A personal API token (`Authorization: Bearer ...`); only its sha256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class LoginFailure(Base):
    """One failed login, counted per (username, client address) for the rate limit."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key", "username", "client", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    client: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Review(Base):
    """One reviewer decision on one item (append-only audit)."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_item", "item_uri", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_uri: Mapped[str] = mapped_column(Text)
    item_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    reviewer: Mapped[str] = mapped_column(String(64))
    via: Mapped[str] = mapped_column(String(16))  # web, api, cli
    verdict: Mapped[str] = mapped_column(String(16))
    old_decision: Mapped[str] = mapped_column(String(16))
    new_decision: Mapped[str] = mapped_column(String(16))
    labels: Mapped[list[str]] = mapped_column(Json, default=list)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class ReviewLabel(Base):
    """Training data from a review: this content is (positive) or is not a policy class."""

    __tablename__ = "review_labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"), index=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    policy: Mapped[str | None] = mapped_column(String(128), nullable=True)
    label: Mapped[str] = mapped_column(String(128))
    positive: Mapped[bool] = mapped_column(Boolean)


APPEND_ONLY = ("reviews", "review_labels")


# -- S3 event notifications (migration 0003) ------------------------------------------------
# S3 delivers events at least once and unordered. Per object we keep the highest
# sequencer acted upon, so a duplicate or an older event arriving late is dropped.


class S3EventState(Base):
    __tablename__ = "s3_event_state"

    bucket: Mapped[str] = mapped_column(String(63), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    # Upper-case hex left-padded to 64 digits: string order is event order (SQL too).
    sequencer: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # events.EventKind value of the last event acted upon
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# -- synchronous verdicts (issue 14, migration 0005) -----------------------------------------
# Who sent an item to POST /api/moderate: one row per (item, caller), so a `client` reads the
# items it submitted (and its own external_id of each), never another caller's.


class ItemSubmission(Base):
    __tablename__ = "item_submissions"
    __table_args__ = (UniqueConstraint("item_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(BigId, ForeignKey("items.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# -- S3 actions on decisions (migration 0007; the code is moderator/actions/s3.py) ----------
# One state row per S3 item: what moderator has done to the object (its tags, where it is
# now), so a redelivered event finds nothing left to do and a dismissal knows what to undo.
# Every step tried is appended to s3_action_log with its outcome (the audit of actions).


class S3ActionState(Base):
    __tablename__ = "s3_action_state"

    uri: Mapped[str] = mapped_column(Text, primary_key=True)  # the item's uri: s3://bucket/key
    decision: Mapped[str | None] = mapped_column(String(16))  # the decision whose actions are in place
    rule: Mapped[str | None] = mapped_column(Text)
    version_id: Mapped[str | None] = mapped_column(String(1024))  # the source version acted upon
    etag: Mapped[str | None] = mapped_column(String(255))  # its ETag (a copy moved back may have a new one)
    tags: Mapped[dict[str, str] | None] = mapped_column(Json)  # moderator's keys as set; None: none set
    # Values moderator's keys had before it first tagged the object (restored on undo).
    prior_tags: Mapped[dict[str, str] | None] = mapped_column(Json)
    moved_to: Mapped[str | None] = mapped_column(Text)  # s3://bucket/key of the quarantined copy
    moved_version_id: Mapped[str | None] = mapped_column(String(1024))
    moved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # the newest event fully acted upon
    last_event_id: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class S3ActionLog(Base):
    __tablename__ = "s3_action_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(Text)
    step: Mapped[str] = mapped_column(String(16))  # tag, untag, move, move_back, none
    outcome: Mapped[str] = mapped_column(String(16))  # done, failed, skipped, not_applicable, no_op
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index(None, "outcome", "created_at"),)


# -- issue 14 (B, migration 0006): decision events, their outbox and deliveries ---------------
# An event is written to outbox_events in the transaction that changes a decision
# (store/outbox.py); the deliverer (actions/deliver.py) fans each one out to the performers
# that want it (webhook endpoints, S3 actions), one event_deliveries row per target.


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # retried for webhook_retry_for_s without success: left for replay


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))  # whsec_... (Standard Webhooks)
    events: Mapped[list[str]] = mapped_column(Json, default=list)  # event types; empty: all
    decisions: Mapped[list[str]] = mapped_column(Json, default=list)  # empty: all
    policies: Mapped[list[str]] = mapped_column(Json, default=list)  # empty: all
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxEvent(Base):
    __tablename__ = "outbox_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # evt_<hex>: stable, the webhook-id
    type: Mapped[str] = mapped_column(String(32))
    item_id: Mapped[int] = mapped_column(BigInteger)  # no foreign key: events outlive items
    seq: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)

    __table_args__ = (UniqueConstraint("item_id", "seq"),)


class EventDelivery(Base):
    """One event for one target of one performer kind (a webhook endpoint, an S3 action)."""

    __tablename__ = "event_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), ForeignKey("outbox_events.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(255))
    item_id: Mapped[int] = mapped_column(BigInteger)  # the event's, for in-order delivery per item
    seq: Mapped[int] = mapped_column(Integer)
    state: Mapped[DeliveryState] = mapped_column(_str_enum(DeliveryState), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retry_since: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)  # retries end retry_for_s after
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("event_id", "kind", "target"),
        Index(None, "state", "next_attempt_at"),
        Index("ix_event_deliveries_order", "kind", "target", "item_id", "seq"),
    )

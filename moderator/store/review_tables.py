"""Tables of the review UI: users, their sessions and API tokens, the review audit trail.

`reviews` and `review_labels` are append-only: the code never updates or deletes them,
and migration 0002 adds triggers that make the database refuse it too.
Items are referred to by uri (the store's natural key) and sha256 (the content the
reviewer saw), so the audit trail outlives re-scans of the same item.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from moderator.store.base import Base
from moderator.store.tables import Json, UTCDateTime, utcnow

__all__ = ["ApiToken", "LoginFailure", "Review", "ReviewLabel", "Role", "User", "Verdict", "WebSession", "utcnow"]


class Role(StrEnum):
    REVIEWER = "reviewer"
    ADMIN = "admin"


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

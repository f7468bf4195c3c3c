"""What goes into the store and what comes out: plain values, no sessions or rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict

from moderator.store.tables import JobState
from moderator.types import Action, ItemStatus, PolicyResult


@dataclass(frozen=True)
class ItemRecord:
    """One item's outcome, as the pipeline saves it (upserted by uri)."""

    uri: str
    sha256: str | None
    size: int | None
    fingerprint: str | None
    status: ItemStatus
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    decision: Action | None = None
    # Replace the stored result of each policy named here; other policies' results stay.
    results: list[PolicyResult] = field(default_factory=list)
    job_id: str | None = None


@dataclass(frozen=True)
class KnownItem:
    """What a re-scan needs to decide whether an item can be skipped."""

    sha256: str | None
    fingerprint: str | None
    status: ItemStatus
    policy_versions: dict[str, str]  # policy -> version of its stored result
    # policy -> model that produced it: the same policy on another model is not current
    policy_models: dict[str, str] = field(default_factory=dict)


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


@dataclass(frozen=True)
class JobInfo:
    id: str
    state: JobState
    targets: list[str]
    policies: list[str]
    total: int | None
    done: int
    errors: int
    skipped: int
    message: str | None
    created_at: datetime
    updated_at: datetime


class StoreCounts(TypedDict):
    items: int
    results: int
    embeddings: int
    jobs: int
    by_status: dict[str, int]  # status value -> items
    by_decision: dict[str, int]  # decision value -> items (items without one are left out)

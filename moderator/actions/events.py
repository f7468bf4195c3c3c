"""Decision events: what leaves moderator when an item's decision is made or changed.

Two types:
- `item.decided`: an item got its first decision, or its decision changed (scan, worker,
  rescore, /api/moderate), or a reviewer's decision changed the item's current decision.
- `review.decided`: every reviewer decision (confirm, dismiss, relabel), `review` set.

Events are written to the outbox (store/outbox.py) in the transaction that changes the
decision; their payload there is this model's data minus the outbox's own columns. `id` is
stable (the same on every redelivery: de-duplicate on it) and `seq` counts per item, over
both types, in the order the changes were made: a receiver keeps the highest seq it has
seen per item and drops anything older.

Helper modules (webhooks, S3 actions) consume `Event`; keep these names stable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moderator.types import Action

EventType = Literal["item.decided", "review.decided"]
EVENT_TYPES: tuple[EventType, ...] = ("item.decided", "review.decided")
ReviewAction = Literal["confirm", "dismiss", "relabel"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FiredOut(_Model):
    """One class of a policy that fired (score >= threshold)."""

    name: str
    action: Action
    score: float
    threshold: float
    evidence: str = ""


class PolicyOutcome(_Model):
    """One policy's stored verdict on the item when the event was made."""

    policy: str
    version: str
    scorer: str
    model_id: str
    action: Action
    fired: list[FiredOut] = Field(default_factory=list)


class ReviewInfo(_Model):
    """The reviewer's decision a `review.decided` event reports."""

    id: int = Field(description="The review's row in the append-only audit.")
    reviewer: str
    action: ReviewAction
    labels: list[str] = Field(default_factory=list)
    note: str = ""
    via: str = Field(description="web, api or cli.")
    decided_at: datetime


class Event(_Model):
    """One decision event (the `data` of a webhook body)."""

    id: str = Field(description="Stable event id (the webhook-id header): de-duplicate on it.")
    type: EventType
    seq: int = Field(ge=1, description="Per-item sequence number: higher is newer.")
    created_at: datetime
    item_id: int
    uri: str
    sha256: str | None = None
    external_id: str | None = None
    decision: Action | None = Field(
        description="The item's current decision: the latest reviewer's, else the pipeline's."
    )
    previous_decision: Action | None = Field(description="The current decision before this event (None: first).")
    pipeline_decision: Action | None = Field(description="The pipeline's own decision (what the policies decided).")
    policies: list[PolicyOutcome] = Field(default_factory=list, description="Every stored policy verdict.")
    review: ReviewInfo | None = Field(default=None, description="Set on review.decided.")

    @property
    def fired(self) -> list[str]:
        """ "policy/class" of every class that fired, over all policies."""
        return [f"{p.policy}/{f.name}" for p in self.policies for f in p.fired]

    @property
    def policy_versions(self) -> dict[str, str]:
        return {p.policy: p.version for p in self.policies}

    def body(self) -> dict[str, Any]:
        """The webhook body (the Standard Webhooks payload shape: type, timestamp, data)."""
        return {"type": self.type, "timestamp": self.created_at.isoformat(), "data": self.model_dump(mode="json")}


def event_from_row(
    event_id: str, type_: str, item_id: int, seq: int, payload: dict[str, Any], created_at: datetime
) -> Event:
    """An outbox row (store/outbox.py OutboxRow fields) as an Event."""
    data = dict(payload)
    data["policies"] = sorted(data.get("policies") or [], key=lambda p: str(p.get("policy")))
    return Event.model_validate(
        {**data, "id": event_id, "type": type_, "item_id": item_id, "seq": seq, "created_at": created_at}
    )

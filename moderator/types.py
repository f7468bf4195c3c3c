"""Boundary types shared by every stage of the pipeline.

Everything that crosses a module boundary (source -> decode -> embed -> score ->
decide -> store) is one of these: plain dataclasses and StrEnums, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """What happens to an item, in increasing severity."""

    ALLOW = "allow"
    TAG = "tag"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.TAG: 1, Action.REVIEW: 2, Action.BLOCK: 3}


def most_severe(actions: Iterable[Action]) -> Action:
    """The most severe action of several; ALLOW when there are none."""
    return max(actions, key=lambda a: a.severity, default=Action.ALLOW)


class ItemStatus(StrEnum):
    OK = "ok"  # scored
    ERROR = "error"  # could not be read or decoded: `error` says why
    SKIPPED = "skipped"  # refused before decoding (archive member rules, size limits)
    DELETED = "deleted"  # the source object was removed


@dataclass(frozen=True)
class SourceItem:
    """One image as a source yields it; bytes are read lazily by `read()`."""

    uri: str
    read: Callable[[], bytes]
    size: int | None = None
    # Cheap change identity known before reading (mtime+size, S3 ETag/VersionId):
    # lets a re-scan skip unchanged items without reading their bytes.
    fingerprint: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Set when the source already knows the item must not be read (e.g. a symlink
    # inside an archive): the item is recorded with status SKIPPED and this reason.
    skip_reason: str | None = None


@dataclass(frozen=True)
class FiredClass:
    """A class whose score reached a threshold, and why."""

    name: str
    action: Action
    score: float
    threshold: float
    evidence: str = ""  # e.g. the prompt that matched best, the hash-list entry


@dataclass(frozen=True)
class PolicyResult:
    """One policy's verdict on one item."""

    policy: str
    policy_version: str
    scorer: str
    model_id: str
    scores: dict[str, float]
    fired: tuple[FiredClass, ...]
    action: Action

    @property
    def tags(self) -> list[str]:
        return [f.name for f in self.fired if f.action is Action.TAG]

    @property
    def flags(self) -> list[str]:
        return [f.name for f in self.fired if f.action.severity >= Action.REVIEW.severity]


@dataclass(frozen=True)
class PolicySkipped:
    """A policy that could not run at all (e.g. CLIP weights not available)."""

    policy: str
    reason: str

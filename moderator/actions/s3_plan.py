"""What to do to an S3 object for a decision: the operator's rules file and the plan (pure, no I/O).

The file (YAML or JSON) named by the setting `s3_actions` (MODERATOR_S3_ACTIONS)::

    tag_key: moderation             # optional; the tags written: moderation, moderation-policies, moderation-version
    rules:                          # the first rule that matches the item's decision applies
      - decision: block
        policies: [known_bad]       # optional: only when one of these policies decided `block` itself
        tag: true
        move_to: s3://legal-hold/
      - decision: block
        tag: true
        move_to: s3://quarantine/blocked/   # the object moves to s3://quarantine/blocked/<bucket>/<key>
      - decision: review
        tag: true

A decision no rule matches gets nothing done (and what was done for an earlier decision
is undone: a dismissed block is moved back and untagged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moderator.types import Action

# S3 tag keys and values: letters, digits, spaces and + - = . _ : / @ (128 / 256 characters).
_TAG_UNSAFE = re.compile(r"[^\w\s+\-=.:/@]")
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
S3_MAX_TAGS = 10


class S3ActionsConfigError(ValueError):
    """The rules file cannot be read or is not valid: one line naming the file and what is wrong."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Action = Field(description="The item decision this rule is for (allow, tag, review, block).")
    policies: list[str] = Field(
        default_factory=list,
        description="Only when one of these policies gave this decision itself; empty: whatever policy did.",
    )
    tag: bool = Field(False, description="Tag the object (merged with its own tags, which are kept).")
    move_to: str | None = Field(
        None, description="s3://bucket/prefix/ to move the object to (copied, verified, then deleted)."
    )

    @field_validator("move_to")
    @classmethod
    def _s3_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("s3://") or not value[len("s3://") :].partition("/")[0]:
            raise ValueError(f"move_to must be s3://bucket/prefix/, not {value!r}")
        return value

    def describe(self, index: int) -> str:
        what = [w for w, on in (("tag", self.tag), (f"move to {self.move_to}", self.move_to)) if on]
        only = f" from {','.join(self.policies)}" if self.policies else ""
        return f"rule {index + 1} ({self.decision.value}{only}: {' + '.join(what) or 'nothing'})"


class S3ActionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag_key: str = Field("moderation", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/@+=\-]+$")
    rules: list[Rule] = Field(default_factory=list)

    @property
    def tag_keys(self) -> tuple[str, str, str]:
        """The keys moderator owns on an object; every other tag is the owner's and is never touched."""
        return (self.tag_key, f"{self.tag_key}-policies", f"{self.tag_key}-version")


def load_config(path: Path) -> S3ActionsConfig:
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except OSError as exc:
        raise S3ActionsConfigError(f"{path}: cannot read the S3 actions file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise S3ActionsConfigError(f"{path}: not valid YAML/JSON: {' '.join(str(exc).split())}") from None
    try:
        return S3ActionsConfig.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise S3ActionsConfigError(f"{path}: {where}: {first['msg']}") from None


@dataclass(frozen=True)
class Plan:
    """The state an object should be in for a decision: its moderator tags and where it lives."""

    decision: str | None
    rule: str | None  # which rule, for the audit
    tags: dict[str, str] = field(default_factory=dict)  # moderator's own keys only; empty: none of ours
    move_to: tuple[str, str] | None = None  # (bucket, prefix)


def _tag_value(text: str) -> str:
    return _TAG_UNSAFE.sub("_", text)[:TAG_VALUE_MAX]


def plan(
    config: S3ActionsConfig,
    decision: str | None,
    policy_actions: dict[str, str],
    policy_versions: dict[str, str],
) -> Plan:
    """The first matching rule for `decision`, as a target state.

    policy_actions: policy -> the action that policy decided on its own (for rules with `policies`).
    """
    if decision is None:
        return Plan(None, None)
    deciding = sorted(p for p, a in policy_actions.items() if a == decision)
    for index, rule in enumerate(config.rules):
        if rule.decision.value != decision:
            continue
        if rule.policies and not set(rule.policies) & set(deciding):
            continue
        tags: dict[str, str] = {}
        if rule.tag:
            key, policies_key, version_key = config.tag_keys
            tags[key] = _tag_value(decision)
            if deciding:
                tags[policies_key] = _tag_value(" ".join(deciding))
                versions = " ".join(f"{p}:{policy_versions[p][:12]}" for p in deciding if p in policy_versions)
                if versions:
                    tags[version_key] = _tag_value(versions)
        move_to = None
        if rule.move_to:
            bucket, _, prefix = rule.move_to[len("s3://") :].partition("/")
            move_to = (bucket, prefix)
        return Plan(decision, rule.describe(index), tags, move_to)
    return Plan(decision, None)


def merged_tags(current: dict[str, str], ours: dict[str, str], owned: tuple[str, ...]) -> dict[str, str]:
    """The object's own tags kept as they are, moderator's keys replaced by `ours`."""
    merged = {k: v for k, v in current.items() if k not in owned}
    merged.update(ours)
    return merged


def quarantine_key(prefix: str, bucket: str, key: str) -> str:
    """Where a moved object goes in the quarantine bucket: the prefix, its bucket, its key."""
    return f"{prefix}{bucket}/{key}"

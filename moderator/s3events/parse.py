"""Parsing of S3 event notifications (pure: JSON in, typed events out).

Accepted shapes:
- AWS: ``{"Records": [{"eventName": "ObjectCreated:Put", "s3": {...}}]}``
- the same wrapped in an SNS envelope (``{"Type": "Notification", "Message": "<json>"}``),
  as SQS receives it from an SNS subscription without raw delivery;
- MinIO: AWS-style ``Records`` (event names prefixed ``s3:``) plus top-level
  ``EventName``/``Key``; a body with only the top-level pair is accepted too;
- ``s3:TestEvent`` (sent once when notifications are configured): acknowledged, no events.

Keys in AWS records are URL-encoded with ``+`` for spaces; they are decoded here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from moderator.s3events.guard import MAX_DEPTH, nesting_depth

# Sequencers are hex strings of varying length; AWS says to left-pad to equal length
# and compare as strings. A fixed width lets the database compare them too.
SEQUENCER_WIDTH = 64


class MalformedEvent(ValueError):
    """The body is not an S3 event notification we can read; the message says why."""


class EventKind(StrEnum):
    CREATED = "created"
    REMOVED = "removed"


@dataclass(frozen=True)
class S3Event:
    kind: EventKind
    bucket: str
    key: str  # decoded
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None  # normalised: upper-case, left-padded to SEQUENCER_WIDTH
    event_time: datetime | None = None
    size: int | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def normalise_sequencer(sequencer: str) -> str:
    """Upper-case hex left-padded with zeros, so plain string order is event order."""
    text = sequencer.strip().upper()
    if not text or len(text) > SEQUENCER_WIDTH or any(c not in "0123456789ABCDEF" for c in text):
        raise MalformedEvent(f"sequencer {sequencer!r} is not a hex string of at most {SEQUENCER_WIDTH} digits")
    return text.rjust(SEQUENCER_WIDTH, "0")


def parse_notification(body: str | bytes | Mapping[str, Any]) -> list[S3Event]:
    """Every object event in one notification body; [] for test events and other event types."""
    doc = _load(body) if isinstance(body, str | bytes) else body
    if not isinstance(doc, Mapping):
        raise MalformedEvent(f"expected a JSON object, got {type(doc).__name__}")
    if "Type" in doc and "Message" in doc:  # SNS envelope
        if doc["Type"] != "Notification":
            return []  # SubscriptionConfirmation and friends carry no object events
        message = doc["Message"]
        if not isinstance(message, str):
            raise MalformedEvent("SNS envelope: Message is not a string")
        return parse_notification(message)
    if doc.get("Event") == "s3:TestEvent":
        return []
    if "Records" in doc and doc["Records"] is not None:
        records = doc["Records"]
        if not isinstance(records, list):
            raise MalformedEvent("Records is not a list")
        return [event for i, rec in enumerate(records) if (event := _record(rec, i)) is not None]
    if "EventName" in doc and "Key" in doc:  # MinIO top-level form without records
        return _minio_top_level(doc)
    raise MalformedEvent("no Records, SNS envelope or test event: not an S3 event notification")


def _load(body: str | bytes) -> Any:
    if nesting_depth(body) > MAX_DEPTH:  # json.loads would recurse that deep (RecursionError)
        raise MalformedEvent(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None


def _kind(event_name: str) -> EventKind | None:
    name = event_name.removeprefix("s3:")
    if name.startswith("ObjectCreated:"):
        return EventKind.CREATED
    if name.startswith(("ObjectRemoved:", "LifecycleExpiration:")):
        return EventKind.REMOVED
    return None  # restore, replication, tagging...: nothing to scan or delete


def _record(rec: Any, index: int) -> S3Event | None:
    where = f"Records[{index}]"
    if not isinstance(rec, Mapping):
        raise MalformedEvent(f"{where} is not an object")
    name = rec.get("eventName")
    if not isinstance(name, str):
        raise MalformedEvent(f"{where}.eventName is missing")
    kind = _kind(name)
    if kind is None:
        return None
    s3 = _mapping(rec.get("s3"), f"{where}.s3")
    bucket = _mapping(s3.get("bucket"), f"{where}.s3.bucket").get("name")
    obj = _mapping(s3.get("object"), f"{where}.s3.object")
    key = obj.get("key")
    if not isinstance(bucket, str) or not bucket:
        raise MalformedEvent(f"{where}.s3.bucket.name is missing")
    if not isinstance(key, str) or not key:
        raise MalformedEvent(f"{where}.s3.object.key is missing")
    return S3Event(
        kind=kind,
        bucket=bucket,
        key=unquote_plus(key),
        etag=_opt_str(obj.get("eTag") or obj.get("etag")),
        version_id=_opt_str(obj.get("versionId")),
        sequencer=normalise_sequencer(seq) if isinstance(seq := obj.get("sequencer"), str) and seq else None,
        event_time=_time(rec.get("eventTime"), where),
        size=_opt_int(obj.get("size"), f"{where}.s3.object.size"),
    )


def _minio_top_level(doc: Mapping[str, Any]) -> list[S3Event]:
    name, full_key = doc["EventName"], doc["Key"]
    if not isinstance(name, str) or not isinstance(full_key, str):
        raise MalformedEvent("EventName and Key must be strings")
    kind = _kind(name)
    if kind is None:
        return []
    bucket, _, key = full_key.partition("/")  # MinIO's Key is "bucket/object", not encoded
    if not bucket or not key:
        raise MalformedEvent(f"Key {full_key!r} is not bucket/object")
    return [S3Event(kind=kind, bucket=bucket, key=key)]


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"{where} is missing")
    return value


def _opt_str(value: Any) -> str | None:
    return value.strip('"') if isinstance(value, str) and value else None


def _opt_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{where} is not an integer")
    return value


def _time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{where}.eventTime is not a string")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise MalformedEvent(f"{where}.eventTime {value!r} is not an ISO time") from None

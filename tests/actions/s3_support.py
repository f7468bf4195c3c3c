"""Fixtures and helpers of the S3 action tests: moto's S3 server, a store on both backends,
decisions made the real way (Store.save_items, a reviewer's decision) so events are the outbox's own.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from moderator.actions.events import Event, event_from_row
from moderator.actions.s3_plan import Rule, S3ActionsConfig
from moderator.review.decisions import DecisionIn, decide
from moderator.settings import Settings
from moderator.store import ItemRecord, Store
from moderator.store.tables import Item, OutboxEvent, S3ActionLog, Verdict
from moderator.types import Action, FiredClass, ItemStatus, PolicyResult

WRITES = ("PutObjectTagging", "DeleteObjectTagging", "CopyObject", "DeleteObject", "PutObject")


@pytest.fixture
def settings(url: str, aws: str) -> Settings:
    return Settings(database_url=url, s3_max_attempts=2)


@pytest.fixture
def quarantine(s3: Any) -> str:
    name = f"quarantine-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def writes(s3: Any, settings: Settings) -> Iterator[list[str]]:
    """The S3 write requests the performer sends (counted on its own boto3 client)."""
    from moderator.sources.s3 import client

    seen: list[str] = []

    def count(model: Any, **_: Any) -> None:
        if model.name in WRITES:
            seen.append(model.name)

    client("s3", settings).meta.events.register("before-call.s3", count)
    yield seen
    client("s3", settings).meta.events.unregister("before-call.s3", count)


def config(quarantine: str | None = None, *, tag: bool = True) -> S3ActionsConfig:
    rules = [Rule(decision=Action.BLOCK, tag=tag, move_to=f"s3://{quarantine}/blocked/" if quarantine else None)]
    return S3ActionsConfig(rules=[*rules, Rule(decision=Action.REVIEW, tag=True)])


def image(seed: int, size: int = 4000) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


def upload(s3: Any, bucket: str, key: str, data: bytes, tagging: str | None = None) -> str:
    extra = {"Tagging": tagging} if tagging else {}
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/jpeg", Metadata={"owner": "alice"}, **extra)
    etag: str = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return etag


def result(action: Action, policy: str = "nsfw") -> PolicyResult:
    fired = (FiredClass("porn", action, 0.91, 0.5, "a photo of porn"),) if action is not Action.ALLOW else ()
    return PolicyResult(policy, f"{policy}-version-0123456789", "clip", "test-tiny", {"porn": 0.91}, fired, action)


def judge(store: Store, uri: str, data: bytes, etag: str, action: Action, **meta: Any) -> None:
    """Store a pipeline verdict the way a scan does (the refresh writes the outbox event)."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    record = ItemRecord(
        uri,
        hashlib.sha256(data).hexdigest(),
        len(data),
        f"etag:{etag}",
        ItemStatus.OK,
        meta={"bucket": bucket, "key": key, "etag": etag, "size": len(data), **meta},
        results=[result(action)],
    )
    store.save_items([record])


def dismiss(store: Store, uri: str) -> None:
    with store.session() as db:
        item = db.scalars(select(Item).where(Item.uri == uri)).one()
        decide(db, item, DecisionIn(verdict=Verdict.DISMISS, note="not porn"), "rita", "api")


def events(store: Store, uri: str) -> list[Event]:
    with store.session() as db:
        item_id = db.scalars(select(Item.id).where(Item.uri == uri)).one()
        rows = db.scalars(select(OutboxEvent).where(OutboxEvent.item_id == item_id).order_by(OutboxEvent.seq))
        return [event_from_row(r.id, r.type, r.item_id, r.seq, r.payload, r.created_at) for r in rows]


def log(store: Store, uri: str) -> list[tuple[str, str, str]]:
    with store.session() as db:
        rows = db.scalars(select(S3ActionLog).where(S3ActionLog.uri == uri).order_by(S3ActionLog.id))
        return [(r.step, r.outcome, r.detail) for r in rows]


def tags(s3: Any, bucket: str, key: str, **version: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key, **version)["TagSet"]}


def exists(s3: Any, bucket: str, key: str) -> bool:
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"))


def body(s3: Any, bucket: str, key: str, **version: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key, **version)["Body"].read()
    return data

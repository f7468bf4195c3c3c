"""POST /hooks/s3 against hostile senders: huge streamed bodies, deep JSON, unknown buckets,
events outside the allow-list (which the SQS listener obeys too)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from moderator.review.routes_hooks import MAX_BODY_BYTES, event_handler, router, webhook_settings
from moderator.s3events.guard import key_allowed, nesting_depth
from moderator.s3events.handler import EventHandler
from moderator.s3events.sqs import listen_sqs
from moderator.settings import Settings
from moderator.store import JobState, Store
from tests.sources.conftest import aws, moto_endpoint, s3, sqs  # noqa: F401  (moto fixtures)
from tests.workers.conftest import redis_url  # noqa: F401  (a private redis-server)

from .test_hooks import SECRET, Submitted, auth

CHUNK = 64 * 1024


def records_body(*uris: str) -> bytes:
    """One AWS-shaped notification with a created event per s3://bucket/key."""
    records = []
    for i, uri in enumerate(uris):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        obj = {"key": key, "size": 5, "eTag": "abc", "sequencer": f"{i + 1:016X}"}
        records.append({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": obj}})
    return json.dumps({"Records": records}).encode()


def hook_app(settings: Settings, handler: EventHandler | None = None) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[webhook_settings] = lambda: settings
    if handler is not None:
        app.dependency_overrides[event_handler] = lambda: handler
    return app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'hook.db'}", webhook_secret=SecretStr(SECRET))


def test_a_huge_chunked_body_is_refused_as_it_streams(settings: Settings, tmp_path: Path) -> None:
    """A 300 MB chunked body: 413 once 1 MiB has come in; the rest is never pulled from the server."""
    app = hook_app(settings, EventHandler(Store(settings.database_url), Submitted()))
    total_chunks = 300 * 1024 * 1024 // CHUNK
    pulled = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": pulled < total_chunks}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"test"), (b"authorization", f"Bearer {SECRET}".encode()), (b"transfer-encoding", b"chunked")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/hooks/s3",
        "raw_path": b"/hooks/s3",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert pulled * CHUNK <= MAX_BODY_BYTES + CHUNK  # was all 300 MB before the check


def test_a_declared_length_over_the_limit_is_refused_before_reading(settings: Settings) -> None:
    submitted = Submitted()
    with TestClient(hook_app(settings, EventHandler(Store(settings.database_url), submitted))) as c:
        r = c.post("/hooks/s3", content=b" " * (MAX_BODY_BYTES + 1), headers=auth())
    assert r.status_code == 413 and submitted == []


def test_deeply_nested_json_is_a_400_not_a_recursion_error(settings: Settings) -> None:
    submitted = Submitted()
    with TestClient(hook_app(settings, EventHandler(Store(settings.database_url), submitted))) as c:
        for body in (b"[" * 200_000 + b"]" * 200_000, b'{"Records":' * 50_000 + b"1" + b"}" * 50_000):
            r = c.post("/hooks/s3", content=body, headers=auth())
            assert r.status_code == 400 and "nested deeper" in r.json()["detail"]
        # An SNS envelope whose Message string hides the deep JSON.
        sns = json.dumps({"Type": "Notification", "Message": "[" * 50_000 + "]" * 50_000}).encode()
        r = c.post("/hooks/s3", content=sns, headers=auth())
        assert r.status_code == 400 and "nested deeper" in r.json()["detail"]
    assert submitted == []


def test_nesting_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(b'{"a": "[[[{{{", "b": [[1]], "c": "\\"]]]"}') == 3
    assert nesting_depth("") == 0
    assert nesting_depth(b"[" * 100_000) == 100_000


def test_events_outside_the_allow_list_are_refused_and_counted(settings: Settings) -> None:
    allow = settings.model_copy(update={"s3_event_allow": ["uploads/in/", "s3://archive"]})
    submitted = Submitted()
    with TestClient(hook_app(allow, EventHandler(Store(allow.database_url), submitted))) as c:
        body = records_body("s3://uploads/in/a.png", "s3://uploads/out/b.png", "s3://other/in/c.png", "s3://archive/d")
        r = c.post("/hooks/s3", content=body, headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["refused"] == 2 and r.json()["submitted"] == 2
    assert submitted == [["s3://uploads/in/a.png"], ["s3://archive/d"]]


@pytest.mark.parametrize(
    ("bucket", "key", "allow", "expected"),
    [
        ("b", "any/key", [], True),
        ("b", "in/x", ["b"], True),
        ("b", "in/x", ["b/in/"], True),
        ("b", "out/x", ["b/in/"], False),
        ("b2", "in/x", ["b/in/"], False),
        ("bb", "in/x", ["b"], False),
        ("b", "in/x", ["s3://b/in"], True),
    ],
)
def test_key_allowed(bucket: str, key: str, allow: list[str], expected: bool) -> None:
    assert key_allowed(bucket, key, allow) is expected


def test_the_sqs_listener_obeys_the_allow_list(sqs: Any, tmp_path: Path) -> None:  # noqa: F811
    url = sqs.create_queue(QueueName=f"events-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    for body in (records_body("s3://uploads/in/a.png"), records_body("s3://uploads/out/b.png")):
        sqs.send_message(QueueUrl=url, MessageBody=body.decode())
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'listen.db'}", s3_event_allow=["uploads/in/"])
    submitted = Submitted()
    stats = listen_sqs(url, settings, submitted, max_messages=2, wait_seconds=1)
    assert submitted == [["s3://uploads/in/a.png"]] and stats.refused == 1
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", []) == []  # both handled


def test_an_unknown_bucket_is_a_recorded_error_and_the_rest_goes_on(
    s3: Any,  # noqa: F811
    redis_url: str,  # noqa: F811
    settings: Settings,
) -> None:
    """Real S3 (moto), real queue (redis): the known bucket's object is enqueued, the unknown one fails its job."""
    known = f"uploads-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=known)
    s3.put_object(Bucket=known, Key="in/a.png", Body=b"12345")
    queue = f"hooks-{uuid.uuid4().hex[:8]}"
    real = settings.model_copy(update={"broker_url": redis_url, "queue_name": queue})
    with TestClient(hook_app(real)) as c:
        r = c.post(
            "/hooks/s3", content=records_body(f"s3://{known}/in/a.png", "s3://no-such-bucket-h5/x.png"), headers=auth()
        )
    assert r.status_code == 200, r.text  # was a 500
    out = r.json()
    assert out["submitted"] == 1 and out["job_id"]
    (error,) = out["errors"]
    assert error.startswith("s3://no-such-bucket-h5/x.png: ") and "no bucket" in error
    jobs = {job.targets[0]: job for job in Store(real.database_url).list_jobs()}
    assert jobs[f"s3://{known}/in/a.png"].total == 1
    failed = jobs["s3://no-such-bucket-h5/x.png"]
    assert failed.state == JobState.FAILED and "no bucket 'no-such-bucket-h5'" in (failed.message or "")
    assert redis.Redis.from_url(redis_url).llen(queue) == 1


def test_a_broker_outage_is_a_503_so_the_sender_delivers_again(
    s3: Any,  # noqa: F811
    settings: Settings,
) -> None:
    from tests.workers.conftest import free_port

    bucket = f"uploads-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.png", Body=b"12345")
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(hook_app(down)) as c:
        r = c.post("/hooks/s3", content=records_body(f"s3://{bucket}/a.png"), headers=auth())
    assert r.status_code == 503 and "deliver them again" in r.json()["detail"]

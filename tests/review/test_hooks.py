"""POST /hooks/s3 on a bare FastAPI app: the shared secret, then the same handling as SQS."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from moderator.review.routes_hooks import event_handler, router, webhook_settings
from moderator.s3events.handler import EventHandler
from moderator.settings import Settings
from moderator.store import ItemRecord, Store
from moderator.types import ItemStatus

SECRET = "s3cr3t-with-enough-entropy"


def minio_body(key: str, name: str = "s3:ObjectCreated:Put", sequencer: str = "17A5B8C0D1E2F3A4") -> bytes:
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventTime": "2024-05-01T12:00:00.000Z",
        "eventName": name,
        "s3": {"bucket": {"name": "uploads"}, "object": {"key": key, "size": 5, "eTag": "abc", "sequencer": sequencer}},
    }
    return json.dumps({"EventName": name, "Key": f"uploads/{key}", "Records": [record]}).encode()


class Submitted(list[list[str]]):
    def __call__(self, uris: list[str]) -> str:
        self.append(list(uris))
        return "job-1"


@pytest.fixture
def submitted() -> Submitted:
    return Submitted()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'hook.db'}")


def app_with(secret: str | None, store: Store, submitted: Submitted) -> TestClient:
    app = FastAPI()
    app.include_router(router)
    settings = Settings(database_url=str(store.url), webhook_secret=SecretStr(secret) if secret else None)
    app.dependency_overrides[webhook_settings] = lambda: settings
    app.dependency_overrides[event_handler] = lambda: EventHandler(store, submitted)
    return TestClient(app)


@pytest.fixture
def client(store: Store, submitted: Submitted) -> Iterator[TestClient]:
    with app_with(SECRET, store, submitted) as c:
        yield c


def auth(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_with_the_secret_a_created_event_is_enqueued(client: TestClient, submitted: Submitted) -> None:
    response = client.post("/hooks/s3", content=minio_body("in/a%20b+c.png"), headers=auth())
    assert response.status_code == 200, response.text
    assert response.json() == {"submitted": 1, "deleted": 0, "dropped": 0, "job_id": "job-1"}
    assert submitted == [["s3://uploads/in/a b c.png"]]
    # The same event pushed again (MinIO retries) is a duplicate.
    assert client.post("/hooks/s3", content=minio_body("in/a%20b+c.png"), headers=auth()).json()["dropped"] == 1
    assert len(submitted) == 1


def test_a_removed_event_marks_the_item_deleted(client: TestClient, store: Store) -> None:
    uri = "s3://uploads/old.png"
    store.save_items([ItemRecord(uri=uri, sha256="1" * 64, size=5, fingerprint="etag:abc", status=ItemStatus.OK)])
    response = client.post("/hooks/s3", content=minio_body("old.png", "s3:ObjectRemoved:Delete"), headers=auth())
    assert response.json()["deleted"] == 1
    assert store.known_items([uri])[uri].status is ItemStatus.DELETED


@pytest.mark.parametrize(
    "headers",
    [{}, auth("wrong"), auth(SECRET + "x"), {"Authorization": SECRET}, {"Authorization": f"Basic {SECRET}"}],
    ids=["none", "wrong", "longer", "no-scheme", "basic"],
)
def test_without_the_right_secret_nothing_happens(
    client: TestClient, submitted: Submitted, headers: dict[str, str]
) -> None:
    response = client.post("/hooks/s3", content=minio_body("a.png"), headers=headers)
    assert response.status_code == 401
    assert submitted == []


def test_with_no_secret_configured_everything_is_refused(store: Store, submitted: Submitted) -> None:
    with app_with(None, store, submitted) as c:
        for headers in ({}, auth(), {"Authorization": "Bearer "}):
            response = c.post("/hooks/s3", content=minio_body("a.png"), headers=headers)
            assert response.status_code == 503
            assert "MODERATOR_WEBHOOK_SECRET" in response.json()["detail"]
    assert submitted == []


def test_a_malformed_body_is_a_400_and_a_test_event_is_acknowledged(client: TestClient, submitted: Submitted) -> None:
    bad = client.post("/hooks/s3", content=b"{nope", headers=auth())
    assert bad.status_code == 400 and "not JSON" in bad.json()["detail"]
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "uploads"}
    ok = client.post("/hooks/s3", json=test_event, headers=auth())
    assert ok.status_code == 200 and ok.json()["submitted"] == 0
    assert submitted == []


def test_the_router_builds_its_store_and_queue_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    fake_queue = types.ModuleType("moderator.queue")

    def enqueue_targets(targets: list[str], settings: Settings, policies: list[str] | None = None) -> str:
        calls.append(targets)
        return "job-9"

    fake_queue.enqueue_targets = enqueue_targets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moderator.queue", fake_queue)
    monkeypatch.setenv("MODERATOR_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("MODERATOR_WEBHOOK_SECRET", SECRET)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as c:
        response = c.post("/hooks/s3", content=minio_body("env.png"), headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == "job-9"
    assert calls == [["s3://uploads/env.png"]]

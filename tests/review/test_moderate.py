"""POST /api/moderate on a real uvicorn on 127.0.0.1: test-tiny CLIP (seeded random weights) + open_nsfw.

Every answer is the stored item (the scan's path), so each test also reads the store; model
calls are counted on the process's one ClipModel, never faked.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from moderator.cli import app as cli_app
from moderator.models.clip import get_clip_model
from moderator.pipeline import Pipeline
from moderator.review import users
from moderator.review.app import create_app
from moderator.review.moderate_batch import ModerateService
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import Store
from moderator.store.tables import Role
from tests import hostile
from tests.conftest import jpeg_bytes
from tests.sources.conftest import aws, bucket, moto_endpoint, s3  # noqa: F401  (moto fixtures)

from .helpers import live_server

# A policy that always flags for review (two exclusive classes: one of them scores >= 0.5).
ALWAYS_REVIEW = """\
name: always
description: two classes, one always fires
mode: exclusive
templates: ["a photo of {}."]
classes:
  cat:
    prompts: ["a cat"]
    threshold: 0.5
    action: review
  dog:
    prompts: ["a dog"]
    threshold: 0.5
    action: review
"""


@dataclass
class Server:
    url: str
    app: FastAPI
    store: Store
    settings: Settings
    tokens: dict[str, str]  # user name -> API token

    @property
    def service(self) -> ModerateService:
        service: ModerateService = self.app.state.moderate
        return service

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def post(self, name: str, data: bytes, params: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        headers = {**self.auth(name), "Content-Type": "image/jpeg", **kw.pop("headers", {})}
        return httpx.post(f"{self.url}/api/moderate", content=data, params=params, headers=headers, timeout=120, **kw)


def make_settings(folder: Path, **over: Any) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "always.yaml").write_text(ALWAYS_REVIEW)
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{folder / 'store.db'}",
        "model": "test-tiny",
        "pretrained": "none",
        "device": "cpu",
        "batch_size": 8,
        "policies": [
            SHIPPED_POLICIES / "nsfw.yaml",
            SHIPPED_POLICIES / "opennsfw.yaml",
            folder / "always.yaml",
        ],
        "moderate_batch_window_ms": 5,
        **over,
    }
    return Settings.model_validate(values)


def with_users(store: Store) -> dict[str, str]:
    roles = {"plat": Role.CLIENT, "other": Role.CLIENT, "rita": Role.REVIEWER, "adam": Role.ADMIN}
    tokens = {}
    with Session(store.engine) as db:
        for name, role in roles.items():
            users.add_user(db, name, role, f"{name}-password-1")
            tokens[name] = users.create_token(db, name)
        db.commit()
    return tokens


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start(**settings): a real uvicorn serving the app; its moderation service loaded before returning."""
    stack: list[Any] = []

    def _start(**over: Any) -> Server:
        settings = make_settings(tmp_path / f"server{len(stack)}", **over)
        store = Store(settings.database_url)
        tokens = with_users(store)
        app = create_app(settings, store)
        ctx = live_server(app)
        url = ctx.__enter__()
        stack.append(ctx)
        assert app.state.moderate.wait_ready(120) and app.state.moderate.error is None, app.state.moderate.error
        return Server(url, app, store, settings, tokens)

    yield _start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture
def server(start: Callable[..., Server]) -> Server:
    return start()


class ModelCalls:
    """Wraps the process's ClipModel.encode_images: rows per call (and an optional gate to hold calls)."""

    def __init__(self, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[int] = []
        self.gate: threading.Event | None = None
        model = get_clip_model(settings)
        real = model.encode_images

        def counted(pixels: Any) -> Any:
            self.rows.append(len(pixels))
            if self.gate is not None:
                self.gate.wait(60)
            return real(pixels)

        monkeypatch.setattr(model, "encode_images", counted)


def items_by_sha(server: Server, name: str, sha256: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.url}/api/items", params={"sha256": sha256}, headers=server.auth(name))
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


# -- the answer ---------------------------------------------------------------------------


def test_raw_body_answers_the_stored_verdict_and_the_same_bytes_again_run_no_model(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = ModelCalls(server.settings, monkeypatch)
    image = jpeg_bytes(11)
    r = server.post("plat", image, {"external_id": "upload-42"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["uri"] == f"upload:{body['sha256']}" and body["status"] == "ok"
    assert body["external_id"] == "upload-42" and body["cached"] is False
    assert {res["policy"] for res in body["results"]} == {"nsfw", "opennsfw", "always"}
    for res in body["results"]:
        assert res["policy_version"] and res["model_id"] and res["scores"]
    always = next(res for res in body["results"] if res["policy"] == "always")
    assert always["fired"] and always["fired"][0]["evidence"]  # what fired, with its evidence
    assert body["decision"] == "review"
    assert calls.rows == [1]
    timing = r.headers["server-timing"]
    assert "queue;dur=" in timing and "embed;dur=" in timing and "total;dur=" in timing

    # Exactly what /api/items shows for it (the store's encoding, not a second one).
    [stored] = items_by_sha(server, "adam", body["sha256"])
    assert stored["results"] == body["results"] and stored["id"] == body["id"]
    assert stored["external_id"] == "upload-42" and stored["decision"] == "review"

    again = server.post("plat", image)
    assert again.status_code == 200
    assert again.json()["cached"] is True and again.json()["results"] == body["results"]
    assert calls.rows == [1], "the same bytes with current results must not run the model"
    assert "embed;dur=" not in again.headers["server-timing"]


def test_multipart_upload_with_policies_and_external_id_fields(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = ModelCalls(server.settings, monkeypatch)
    files = {"file": ("photo.jpg", jpeg_bytes(12), "image/jpeg")}
    r = httpx.post(
        f"{server.url}/api/moderate",
        files=files,
        data={"policies": "opennsfw", "external_id": "mp-1"},
        headers=server.auth("plat"),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [res["policy"] for res in body["results"]] == ["opennsfw"]
    assert body["external_id"] == "mp-1" and body["decision"] == "allow"
    assert 0 <= body["results"][0]["scores"]["nsfw"] <= 1
    assert calls.rows == [], "open_nsfw alone needs no CLIP embedding"
    # The other policies run later on the same stored item; the restriction only chose what ran.
    r = server.post("plat", jpeg_bytes(12), {"policies": "always,nsfw"})
    assert {res["policy"] for res in r.json()["results"]} == {"always", "nsfw"}
    assert r.json()["cached"] is False and calls.rows == [1]


def test_unknown_policy_is_a_422_naming_the_configured_ones(server: Server) -> None:
    r = server.post("plat", jpeg_bytes(13), {"policies": "nsfw,nope"})
    assert r.status_code == 422
    assert "nope" in r.text and "opennsfw" in r.text


def test_json_uri_is_read_through_the_s3_source(
    start: Callable[..., Server],
    s3: Any,  # noqa: F811
    bucket: str,  # noqa: F811
) -> None:
    s3.put_object(Bucket=bucket, Key="in/a.jpg", Body=jpeg_bytes(14))
    s3.put_object(Bucket=bucket, Key="private/b.jpg", Body=jpeg_bytes(15))
    server = start(moderate_uri_roots=[f"s3://{bucket}/in/"])
    uri = f"s3://{bucket}/in/a.jpg"
    post = {"headers": server.auth("plat"), "timeout": 120}
    r = httpx.post(f"{server.url}/api/moderate", json={"uri": uri, "external_id": "s3-1"}, **post)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["uri"] == uri and body["external_id"] == "s3-1" and body["meta"]["bucket"] == bucket
    assert body["decision"] == "review"
    refused = httpx.post(f"{server.url}/api/moderate", json={"uri": f"s3://{bucket}/private/b.jpg"}, **post)  # type: ignore[arg-type]
    assert refused.status_code == 403
    missing = httpx.post(f"{server.url}/api/moderate", json={"uri": f"s3://{bucket}/in/none.jpg"}, **post)  # type: ignore[arg-type]
    assert missing.status_code == 404
    local = httpx.post(f"{server.url}/api/moderate", json={"uri": "/etc/passwd"}, **post)  # type: ignore[arg-type]
    assert local.status_code == 403


# -- batching, overload, limits -----------------------------------------------------------


def test_concurrent_requests_are_scored_in_one_model_call(
    start: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start(moderate_batch_window_ms=1000, moderate_max_batch=8, batch_size=8, moderate_workers=1)
    calls = ModelCalls(server.settings, monkeypatch)
    images = [jpeg_bytes(100 + i) for i in range(8)]
    barrier = threading.Barrier(len(images))
    answers: list[httpx.Response] = []

    def send(data: bytes) -> None:
        barrier.wait()
        answers.append(server.post("plat", data))

    threads = [threading.Thread(target=send, args=(d,)) for d in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [a.status_code for a in answers] == [200] * 8
    sizes = list(server.service.batch_sizes)
    assert sum(sizes) == 8 and len(sizes) <= 2, sizes  # one batch (two when the window closed early)
    assert len(calls.rows) == len(sizes) and sum(calls.rows) == 8, calls.rows
    assert max(int(a.headers["server-timing"].split('desc="')[1].split(" ")[0]) for a in answers) == max(sizes)
    # A lone request does not wait out the window: nobody else is arriving.
    lone = server.post("plat", jpeg_bytes(99))
    queued = float(lone.headers["server-timing"].split("queue;dur=")[1].split(",")[0])
    assert lone.status_code == 200 and queued < 500, lone.headers["server-timing"]


def test_overload_answers_503_with_retry_after(start: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> None:
    server = start(moderate_max_pending=2, moderate_batch_window_ms=0, moderate_max_batch=1)
    calls = ModelCalls(server.settings, monkeypatch)
    calls.gate = threading.Event()
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda d=d: answers.append(server.post("plat", d)))
        for d in (jpeg_bytes(200), jpeg_bytes(201))
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while server.service.pending < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = server.post("plat", jpeg_bytes(202))
    calls.gate.set()
    for t in threads:
        t.join(120)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [200, 200]
    assert server.post("plat", jpeg_bytes(202)).status_code == 200  # room again


def test_body_over_the_limit_is_refused_while_streaming(server: Server) -> None:
    limit = server.settings.moderate_max_bytes
    sent = 0

    def body() -> Iterator[bytes]:  # no Content-Length: only counting the stream can stop it
        nonlocal sent
        for _ in range(limit // 65536 + 64):
            sent += 65536
            yield b"\xff" * 65536

    with httpx.Client(timeout=60) as c:
        try:
            r = c.post(f"{server.url}/api/moderate", content=body(), headers=server.auth("plat"))
            assert r.status_code == 413
        except httpx.HTTPError:
            pass  # the server answered 413 and closed while we were still sending: also a refusal
    assert server.store.counts()["items"] == 0
    # A declared length over the limit is refused before one byte of the body is sent.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        head = (
            f"POST /api/moderate HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.tokens['plat']}\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {limit + 1}\r\n\r\n"
        )
        conn.sendall(head.encode())
        status_line = conn.recv(4096).split(b"\r\n")[0]
    assert status_line.startswith(b"HTTP/1.1 413"), status_line


def test_small_limit_413_and_nothing_recorded(start: Callable[..., Server]) -> None:
    server = start(moderate_max_bytes=2000)
    big = jpeg_bytes(300, size=(400, 300))
    assert len(big) > 2000
    r = server.post("plat", big)
    assert r.status_code == 413 and "2000" in r.text
    files = {"file": ("a.jpg", big, "image/jpeg")}
    r = httpx.post(f"{server.url}/api/moderate", files=files, headers=server.auth("plat"), timeout=60)
    assert r.status_code == 413
    assert server.store.counts()["items"] == 0


def test_hostile_file_is_422_with_the_reason_a_scan_records_and_is_recorded(server: Server, tmp_path: Path) -> None:
    bomb = hostile.huge_header_png()
    r = server.post("plat", bomb, headers={"Content-Type": "image/png"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    # The scan of the same file records the same reason.
    folder = tmp_path / "scan"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(bomb)
    scan_settings = make_settings(tmp_path / "scan-store")
    summary = Pipeline(scan_settings, Store(scan_settings.database_url)).scan_targets([str(folder)])
    assert dict(summary.errors_by_reason) == {detail["type"]: 1}
    assert detail["type"] == "too_many_pixels"
    item = r.json()["item"]
    [stored] = items_by_sha(server, "plat", item["sha256"])
    assert stored["status"] == "error" and stored["error"] == detail["msg"]
    again = server.post("plat", bomb)  # answered from the store, with the stored reason
    assert again.status_code == 422 and again.json()["detail"][0]["type"] == "too_many_pixels"
    assert again.json()["item"]["cached"] is True
    svg = server.post("plat", b"<svg onload=alert(1)>")  # never opened, as in a scan
    assert svg.status_code == 422 and svg.json()["detail"][0]["type"] == "unsupported_format"
    garbage = server.post("plat", b"\x00\x01 random bytes")
    assert garbage.status_code == 422 and garbage.json()["detail"][0]["type"] == "not_an_image"


def test_the_item_is_in_the_queue_export_and_search(server: Server) -> None:
    body = server.post("plat", jpeg_bytes(16), {"external_id": "e-16"}).json()
    queue = httpx.get(f"{server.url}/api/queue", headers=server.auth("rita")).json()
    assert body["id"] in [row["id"] for row in queue["items"]]
    out = CliRunner().invoke(cli_app, ["export", "--format", "jsonl", "--database-url", server.settings.database_url])
    assert out.exit_code == 0, out.output
    rows = {row["uri"]: row for row in map(json.loads, out.stdout.splitlines())}
    assert rows[body["uri"]]["decision"] == "review"
    search = httpx.get(f"{server.url}/api/search", params={"sha256": body["sha256"]}, headers=server.auth("rita"))
    assert search.status_code == 200  # its embedding is stored: "more like this" knows it


# -- the client role ------------------------------------------------------------------------

# What a client may call (everything else: 403); the login page, /healthz and the S3 hook have no role check.
CLIENT_MAY = {
    ("POST", "/api/moderate"),
    ("GET", "/api/items"),
    ("GET", "/api/items/{item_id}"),
    # issue 18: a platform opens appeals on its own items and reads their outcome
    ("POST", "/api/items/{item_id}/appeals"),
    ("GET", "/api/appeals"),
    ("GET", "/api/appeals/{appeal_id}"),
    ("GET", "/api/tokens"),
    ("DELETE", "/api/tokens/{token_id}"),
    ("GET", "/account"),
    ("POST", "/account/tokens"),
    ("POST", "/account/tokens/{token_id}/revoke"),
    ("POST", "/logout"),
}
NO_ROLE_CHECK = {("GET", "/login"), ("POST", "/login"), ("GET", "/healthz"), ("POST", "/hooks/s3")}


def test_a_client_gets_403_on_every_other_route(server: Server) -> None:
    checked = []
    for route in iter_route_contexts(server.app.routes):
        methods = getattr(route, "methods", None)
        if methods is None:  # the /static mount
            continue
        for method in set(methods) - {"HEAD"}:
            key = (method, route.path)
            if key in CLIENT_MAY or key in NO_ROLE_CHECK:
                continue
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            r = httpx.request(method, f"{server.url}{path}", headers=server.auth("plat"), timeout=30)
            assert r.status_code == 403, (method, route.path, r.status_code, r.text[:200])
            checked.append(key)
    assert ("GET", "/api/queue") in checked and ("POST", "/api/scans") in checked
    assert ("POST", "/api/items/{item_id}/decisions") in checked and ("GET", "/api/search") in checked
    assert ("GET", "/admin/users") in checked and ("GET", "/metrics") in checked


def test_a_client_reads_only_the_items_it_sent(server: Server) -> None:
    mine = server.post("plat", jpeg_bytes(17), {"external_id": "mine"}).json()
    theirs = server.post("other", jpeg_bytes(18), {"external_id": "theirs"}).json()
    assert [i["id"] for i in items_by_sha(server, "plat", mine["sha256"])] == [mine["id"]]
    assert items_by_sha(server, "plat", theirs["sha256"]) == []
    get = httpx.get(f"{server.url}/api/items/{theirs['id']}", headers=server.auth("plat"))
    assert get.status_code == 404
    assert (
        httpx.get(f"{server.url}/api/items/{mine['id']}", headers=server.auth("plat")).json()["external_id"] == "mine"
    )
    # The same bytes sent by both: each reads it, each with its own external_id.
    shared = server.post("other", jpeg_bytes(17), {"external_id": "also-mine"}).json()
    assert shared["id"] == mine["id"] and shared["cached"] is True
    assert items_by_sha(server, "plat", mine["sha256"])[0]["external_id"] == "mine"
    assert items_by_sha(server, "other", mine["sha256"])[0]["external_id"] == "also-mine"
    assert items_by_sha(server, "adam", mine["sha256"])[0]["external_id"] == "also-mine"  # the latest
    # Reviewers and admins may moderate too; a client's token works with Basic auth as well.
    assert server.post("rita", jpeg_bytes(19)).status_code == 200
    basic = httpx.post(
        f"{server.url}/api/moderate", content=jpeg_bytes(20), auth=("plat", "plat-password-1"), timeout=120
    )
    assert basic.status_code == 200
    anonymous = httpx.post(f"{server.url}/api/moderate", content=jpeg_bytes(21))
    assert anonymous.status_code == 401


def test_the_models_load_at_start_not_on_the_first_request(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lazy")
    app = create_app(settings, Store(settings.database_url))
    assert getattr(app.state, "moderate", None) is None  # built, not started: nothing loaded
    with live_server(app) as url:
        service: ModerateService = app.state.moderate
        assert service.wait_ready(120) and service.error is None
        # Every worker has the full policy set compiled before any request.
        assert [list(w._pipelines) for w in service._workers] == [[None], [None]]
        del url
    off = make_settings(tmp_path / "off", moderate_api=False)
    app = create_app(off, Store(off.database_url))
    tokens = with_users(app.state.store)
    with live_server(app) as url:
        r = httpx.post(
            f"{url}/api/moderate", content=jpeg_bytes(1), headers={"Authorization": f"Bearer {tokens['plat']}"}
        )
        assert r.status_code == 503


@pytest.mark.postgres
def test_on_postgres_concurrent_clients_batches_and_the_store_answer(
    start: Callable[..., Server], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start(database_url=pg_url, moderate_batch_window_ms=200)
    calls = ModelCalls(server.settings, monkeypatch)
    images = [jpeg_bytes(400 + i) for i in range(6)]
    answers: dict[int, httpx.Response] = {}
    threads = [
        threading.Thread(target=lambda i=i: answers.__setitem__(i, server.post(("plat", "other")[i % 2], images[i])))
        for i in range(len(images))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(a.status_code for a in answers.values()) == [200] * 6
    assert sum(calls.rows) == 6 and len(calls.rows) < 6  # batched: fewer model calls than requests
    again = server.post("plat", images[0], {"external_id": "pg"})
    assert again.json()["cached"] is True and sum(calls.rows) == 6
    assert items_by_sha(server, "plat", answers[1].json()["sha256"]) == []  # sent by the other client
    assert items_by_sha(server, "plat", answers[0].json()["sha256"])[0]["external_id"] == "pg"
    server.app.state.moderate.stop()
    server.store.close()

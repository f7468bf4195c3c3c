"""Review test helpers: seeding through the store API (real PNGs, three users), logging in."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from moderator.settings import Settings
from moderator.store import ItemRecord, Store
from moderator.types import Action, FiredClass, ItemStatus, PolicyResult

PASSWORDS = {"rita": "rita-reviews-1", "adam": "adam-admin-12", "dora": "dora-disabled"}
HOSTILE = "<img src=x onerror=alert(1)>.png"


@dataclass
class Seeded:
    store: Store
    settings: Settings
    folder: Path
    uris: dict[str, str]  # short name -> uri


def make_result(policy: str, scores: dict[str, float], fired: list[tuple[str, Action, float]]) -> PolicyResult:
    fc = tuple(FiredClass(name=n, action=a, score=s, threshold=0.3, evidence=f"a photo of {n}") for n, a, s in fired)
    action = max((a for _, a, _ in fired), key=lambda a: a.severity, default=Action.ALLOW)
    return PolicyResult(
        policy=policy,
        policy_version="v1abc",
        scorer="clip",
        model_id="test-tiny",
        scores=scores,
        fired=fc,
        action=action,
    )


def seed(store: Store, folder: Path) -> dict[str, str]:
    """Five items: one blocked, three for review (one with a hostile name), one allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        "blocked": (
            "blocked.png",
            (200, 30, 30),
            Action.BLOCK,
            [make_result("nsfw", {"neutral": 0.05, "explicit": 0.91}, [("explicit", Action.BLOCK, 0.91)])],
        ),
        "suggestive": (
            "suggestive.png",
            (30, 200, 30),
            Action.REVIEW,
            [make_result("nsfw", {"neutral": 0.4, "suggestive": 0.55}, [("suggestive", Action.REVIEW, 0.55)])],
        ),
        "gore": (
            "gore.png",
            (30, 30, 200),
            Action.REVIEW,
            [
                make_result("violence", {"calm": 0.6, "gore": 0.4}, [("gore", Action.REVIEW, 0.4)]),
                make_result("tags", {"outdoor": 0.8}, [("outdoor", Action.TAG, 0.8)]),
            ],
        ),
        "hostile": (
            HOSTILE,
            (120, 120, 120),
            Action.REVIEW,
            [make_result("nsfw", {"neutral": 0.5, "suggestive": 0.35}, [("suggestive", Action.REVIEW, 0.35)])],
        ),
        "allowed": ("allowed.png", (250, 250, 250), Action.ALLOW, [make_result("nsfw", {"neutral": 0.99}, [])]),
    }
    uris: dict[str, str] = {}
    records = []
    for short, (name, colour, decision, results) in specs.items():
        path = folder / name
        Image.new("RGB", (64, 48), colour).save(path, format="PNG")
        uri = str(path.resolve())
        uris[short] = uri
        records.append(
            ItemRecord(
                uri=uri,
                sha256=f"{len(uris):064x}",
                size=path.stat().st_size,
                fingerprint=None,
                status=ItemStatus.OK,
                meta={"caption": "<script>alert('meta')</script>"},
                decision=decision,
                results=results,
            )
        )
    store.save_items(records)
    return uris


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]*)">', html)
    assert found, "no csrf meta tag in the page"
    return found.group(1)


def login(client: TestClient, name: str, password: str | None = None) -> str:
    """Logs `client` in through the form; returns the session's CSRF token."""
    r = post_login(client, name, password or PASSWORDS[name])
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/queue").text)


def item_id(store: Store, uri: str) -> int:
    from sqlalchemy import select

    from moderator.store.tables import Item

    with Session(store.engine) as db:
        found = db.scalar(select(Item.id).where(Item.uri == uri))
    assert found is not None
    return found


def post_login(client: TestClient, name: str, password: str) -> Any:
    """One login form submission, with the login CSRF cookie the last form set."""
    if "moderator_login_csrf" not in client.cookies:
        client.get("/login")
    csrf = client.cookies.get("moderator_login_csrf", "")
    return client.post("/login", data={"username": name, "password": password, "csrf_token": csrf, "next": "/queue"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any, **options: Any) -> Iterator[str]:
    """A real uvicorn on 127.0.0.1 in a thread (options as `moderator serve` passes them); yields its URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)

"""The decision flow: queue order and filters, confirm/dismiss/relabel, bulk, the append-only audit.

Every test runs on SQLite and on PostgreSQL (the `seeded` store below is parametrized).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from moderator.store.tables import Review, ReviewLabel

from .conftest import seed_store
from .helpers import Seeded, item_id, login, make_result


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Seeded]:
    """The review store of conftest, on each backend."""
    url = f"sqlite:///{tmp_path / 'review.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    found = seed_store(url, tmp_path / "images")
    yield found
    found.store.close()


def _queue_uris(client: TestClient, **params: str) -> list[str]:
    r = client.get("/api/queue", params=params)
    assert r.status_code == 200, r.text
    return [row["uri"] for row in r.json()["items"]]


def test_queue_is_flagged_unreviewed_items_by_severity_then_score(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    u = seeded.uris
    assert _queue_uris(client) == [u["blocked"], u["suggestive"], u["gore"], u["hostile"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"decision": "review"}, ["suggestive", "gore", "hostile"]),
        ({"policy": "violence"}, ["gore"]),
        ({"class": "suggestive"}, ["suggestive", "hostile"]),
        ({"tag": "outdoor"}, ["gore"]),
        ({"min_score": "0.38", "max_score": "0.6"}, ["suggestive", "gore"]),
        ({"source": "SEE-BELOW"}, ["blocked"]),
        ({"since": "2999-01-01"}, []),
    ],
)
def test_queue_filters(client: TestClient, seeded: Seeded, params: dict[str, str], expected: list[str]) -> None:
    login(client, "rita")
    if params.get("source"):
        params = {"source": seeded.uris["blocked"][:-4]}  # a uri prefix
    assert _queue_uris(client, **params) == [seeded.uris[k] for k in expected]


def test_queue_pages(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    first = client.get("/api/queue", params={"per_page": 3}).json()
    second = client.get("/api/queue", params={"per_page": 3, "page": 2}).json()
    assert first["total"] == second["total"] == 4
    assert [r["uri"] for r in first["items"] + second["items"]] == _queue_uris(client)


def test_confirm_from_the_page_leaves_queue_and_is_audited(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["suggestive"])
    r = client.post(
        "/decisions", data={"item_ids": str(iid), "verdict": "confirm", "note": "clearly", "csrf_token": csrf}
    )
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    assert seeded.uris["suggestive"] not in _queue_uris(client)
    item = client.get(f"/api/items/{iid}").json()
    assert item["decision"] == "review" and item["current_decision"] == "block"
    (review,) = item["reviews"]
    assert review["reviewer"] == "rita" and review["via"] == "web" and review["note"] == "clearly"
    assert (review["old_decision"], review["new_decision"], review["labels"]) == (
        "review",
        "block",
        ["nsfw/suggestive"],
    )
    with Session(seeded.store.engine) as db:
        labels = db.execute(select(ReviewLabel.policy, ReviewLabel.label, ReviewLabel.positive)).all()
    assert labels == [("nsfw", "suggestive", True)]


def test_dismiss_then_relabel_latest_review_is_current(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["hostile"])
    headers = {"X-CSRF-Token": csrf}
    r = client.post(f"/api/items/{iid}/decisions", json={"verdict": "dismiss"}, headers=headers)
    assert r.json()["new_decision"] == "allow"
    r = client.post(f"/api/items/{iid}/decisions", json={"verdict": "relabel", "labels": []}, headers=headers)
    assert r.status_code == 422
    r = client.post(
        f"/api/items/{iid}/decisions",
        json={"verdict": "relabel", "labels": ["nsfw/explicit"], "decision": "block", "note": "worse"},
        headers=headers,
    )
    assert r.status_code == 201
    item = client.get(f"/api/items/{iid}").json()
    assert item["current_decision"] == "block"
    assert [(h["verdict"], h["old_decision"], h["new_decision"]) for h in item["reviews"]] == [
        ("relabel", "allow", "block"),
        ("dismiss", "review", "allow"),
    ]
    with Session(seeded.store.engine) as db:
        rows = db.execute(select(ReviewLabel.label, ReviewLabel.positive).order_by(ReviewLabel.id)).all()
    # dismiss: suggestive is wrong; relabel: explicit is right, suggestive still wrong
    assert rows == [("suggestive", False), ("explicit", True), ("suggestive", False)]


def test_bulk_decision(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "adam")
    ids = [item_id(seeded.store, seeded.uris[k]) for k in ("blocked", "gore")]
    r = client.post("/decisions", data={"item_ids": [str(i) for i in ids], "verdict": "dismiss", "csrf_token": csrf})
    assert r.status_code == 303
    assert _queue_uris(client) == [seeded.uris["suggestive"], seeded.uris["hostile"]]
    audit = client.get("/admin/audit").text
    assert audit.count("<td>dismiss</td>") == 2 and "adam" in audit
    r = client.post(
        "/api/decisions", json={"item_ids": [ids[0], 99999], "verdict": "confirm"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 404
    assert len(client.get(f"/api/items/{ids[0]}").json()["reviews"]) == 1  # all or none


def test_audit_is_append_only_in_the_database(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["blocked"])
    client.post("/decisions", data={"item_ids": str(iid), "verdict": "confirm", "csrf_token": csrf})
    for statement in (update(Review).values(note="rewritten"), delete(ReviewLabel), delete(Review)):
        with Session(seeded.store.engine) as db, pytest.raises(DBAPIError, match="append-only"):
            db.execute(statement)
            db.commit()
    with Session(seeded.store.engine) as db:
        assert db.scalars(select(Review.note)).all() == [""]


def test_rescanned_content_comes_back_to_the_queue(client: TestClient, seeded: Seeded) -> None:
    """A review covers the content the reviewer saw: new bytes at the same uri are reviewed again."""
    from moderator.store import ItemRecord
    from moderator.types import Action, ItemStatus

    csrf = login(client, "rita")
    uri = seeded.uris["gore"]
    client.post(
        "/decisions", data={"item_ids": str(item_id(seeded.store, uri)), "verdict": "dismiss", "csrf_token": csrf}
    )
    assert uri not in _queue_uris(client)
    result = make_result("violence", {"calm": 0.5, "gore": 0.5}, [("gore", Action.REVIEW, 0.5)])
    record = ItemRecord(
        uri=uri,
        sha256="f" * 64,
        size=1,
        fingerprint=None,
        status=ItemStatus.OK,
        decision=Action.REVIEW,
        results=[result],
    )
    seeded.store.save_items([record])
    assert uri in _queue_uris(client)

"""Appeals (issue 18): opened by the platform, decided by another reviewer with a statement of reasons,
part of the item's history, the audit and the decision events; on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderator.review.app import create_app
from moderator.store.tables import OutboxEvent, Review

from .helpers import Seeded, item_id, login
from .test_leases import ROB_PASSWORD, add_people, bearer, work_store

STATEMENT = "This is my own holiday photo <b>not</b> explicit; please look again."
REASONS = "On a second look the image shows a red square only: no nudity. The block is lifted."


@pytest.fixture(params=["sqlite", "postgresql"])
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Seeded:
    return work_store(request, tmp_path)


def _setup(work: Seeded) -> tuple[TestClient, dict[str, str], int, int]:
    tokens = add_people(work)
    api = TestClient(create_app(work.settings, work.store), follow_redirects=False)
    blocked = item_id(work.store, work.uris["blocked"])
    gore = item_id(work.store, work.uris["gore"])
    # rita confirms the block: the decision the user will appeal.
    r = api.post(f"/api/items/{blocked}/decisions", json={"verdict": "confirm"}, headers=bearer(tokens["rita"]))
    assert r.status_code == 201, r.text
    return api, tokens, blocked, gore


def test_the_platform_opens_an_appeal_on_its_own_items_only(work: Seeded) -> None:
    api, tokens, blocked, gore = _setup(work)
    r = api.post(f"/api/items/{blocked}/appeals", json={"statement": STATEMENT}, headers=bearer(tokens["plat"]))
    assert r.status_code == 201, r.text
    appeal = r.json()
    assert appeal["state"] == "open" and appeal["statement"] == STATEMENT
    assert appeal["appealed_decision"] == "block" and appeal["appealed_reviewer"] is None  # hidden from a client
    # Not its item: reads as unknown. A reviewer does not open appeals. One open appeal per item.
    assert (
        api.post(f"/api/items/{gore}/appeals", json={"statement": "x"}, headers=bearer(tokens["plat"])).status_code
        == 404
    )
    assert (
        api.post(f"/api/items/{gore}/appeals", json={"statement": "x"}, headers=bearer(tokens["rob"])).status_code
        == 403
    )
    again = api.post(f"/api/items/{blocked}/appeals", json={"statement": "again"}, headers=bearer(tokens["plat"]))
    assert again.status_code == 409 and "already has an open appeal" in again.json()["detail"]
    # Bounds: an empty statement, an unknown field.
    assert (
        api.post(f"/api/items/{blocked}/appeals", json={"statement": ""}, headers=bearer(tokens["adam"])).status_code
        == 422
    )
    bad = api.post(f"/api/items/{gore}/appeals", json={"statement": "x", "extra": 1}, headers=bearer(tokens["adam"]))
    assert bad.status_code == 422
    # An admin may open one for any item; the client lists only the appeals on its own items.
    assert (
        api.post(f"/api/items/{gore}/appeals", json={"statement": "x"}, headers=bearer(tokens["adam"])).status_code
        == 201
    )
    mine = api.get("/api/appeals", headers=bearer(tokens["plat"])).json()
    assert mine["total"] == 1 and [a["item_id"] for a in mine["appeals"]] == [blocked]
    assert api.get("/api/appeals", headers=bearer(tokens["rob"])).json()["total"] == 2
    other = api.get("/api/appeals", params={"state": "open"}, headers=bearer(tokens["adam"])).json()["appeals"]
    assert api.get(f"/api/appeals/{other[1]['id']}", headers=bearer(tokens["plat"])).status_code == 404


def test_an_appeal_is_decided_by_another_reviewer_with_reasons(work: Seeded) -> None:
    api, tokens, blocked, _ = _setup(work)
    appeal_id = api.post(
        f"/api/items/{blocked}/appeals", json={"statement": STATEMENT}, headers=bearer(tokens["plat"])
    ).json()["id"]
    body = {"outcome": "reversed", "reasons": REASONS}

    # rita made the decision under appeal: refused, with the reason why.
    r = api.post(f"/api/appeals/{appeal_id}/decision", json=body, headers=bearer(tokens["rita"]))
    assert r.status_code == 403
    assert "you made the decision under appeal" in r.json()["detail"] and "another reviewer" in r.json()["detail"]
    # No reasons: refused (a statement of reasons is required).
    empty = api.post(
        f"/api/appeals/{appeal_id}/decision", json={"outcome": "upheld", "reasons": ""}, headers=bearer(tokens["rob"])
    )
    assert empty.status_code == 422
    # A client may not decide.
    assert api.post(f"/api/appeals/{appeal_id}/decision", json=body, headers=bearer(tokens["plat"])).status_code == 403

    r = api.post(f"/api/appeals/{appeal_id}/decision", json=body, headers=bearer(tokens["rob"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["state"], out["decision"], out["reasons"], out["decided_by"]) == ("reversed", "allow", REASONS, "rob")
    again = api.post(f"/api/appeals/{appeal_id}/decision", json=body, headers=bearer(tokens["adam"]))
    assert again.status_code == 409 and "already decided" in again.json()["detail"]

    # The item's history and current decision; the platform sees outcome and reasons, not who.
    item = api.get(f"/api/items/{blocked}", headers=bearer(tokens["plat"])).json()
    assert item["current_decision"] == "allow"
    latest = item["reviews"][0]
    assert (latest["reviewer"], latest["via"], latest["verdict"], latest["new_decision"]) == (
        "rob",
        "appeal",
        "dismiss",
        "allow",
    )
    assert REASONS in latest["note"]
    seen = api.get(f"/api/appeals/{appeal_id}", headers=bearer(tokens["plat"])).json()
    assert (seen["state"], seen["reasons"], seen["decided_by"]) == ("reversed", REASONS, None)

    # The audit and the decision events carry it like any review.
    with Session(work.store.engine) as db:
        audit = db.execute(select(Review.reviewer, Review.via, Review.new_decision).order_by(Review.id)).all()
        assert [tuple(a) for a in audit] == [("rita", "api", "block"), ("rob", "appeal", "allow")]
        kinds = [
            (e.type, e.payload.get("review") and e.payload["review"]["via"])
            for e in db.scalars(select(OutboxEvent).where(OutboxEvent.item_id == blocked).order_by(OutboxEvent.seq))
        ]
    assert kinds[-2:] == [("review.decided", "appeal"), ("item.decided", None)]


def test_upheld_keeps_the_decision_and_a_reversal_must_change_it(work: Seeded) -> None:
    api, tokens, blocked, _ = _setup(work)
    first = api.post(f"/api/items/{blocked}/appeals", json={"statement": "no"}, headers=bearer(tokens["plat"])).json()
    same = {"outcome": "reversed", "decision": "block", "reasons": "r"}
    r = api.post(f"/api/appeals/{first['id']}/decision", json=same, headers=bearer(tokens["rob"]))
    assert r.status_code == 422 and "already block" in r.json()["detail"][0]["msg"]
    up = {"outcome": "upheld", "reasons": "The image is what the policy blocks."}
    r = api.post(f"/api/appeals/{first['id']}/decision", json=up, headers=bearer(tokens["rob"]))
    assert r.status_code == 200 and (r.json()["state"], r.json()["decision"]) == ("upheld", "block")
    # A second appeal: now rob made the decision under appeal, and rita may decide it.
    second = api.post(f"/api/items/{blocked}/appeals", json={"statement": "still no"}, headers=bearer(tokens["plat"]))
    assert second.status_code == 201
    assert (
        api.post(f"/api/appeals/{second.json()['id']}/decision", json=up, headers=bearer(tokens["rob"])).status_code
        == 403
    )
    assert (
        api.post(f"/api/appeals/{second.json()['id']}/decision", json=up, headers=bearer(tokens["rita"])).status_code
        == 200
    )


def test_the_appeal_pages(work: Seeded) -> None:
    api, tokens, blocked, _ = _setup(work)
    appeal_id = api.post(
        f"/api/items/{blocked}/appeals", json={"statement": STATEMENT}, headers=bearer(tokens["plat"])
    ).json()["id"]
    app = api.app
    rita = TestClient(app, follow_redirects=False)
    login(rita, "rita")
    listing = rita.get("/appeals").text
    assert f'href="/appeals/{appeal_id}"' in listing and "&lt;b&gt;not&lt;/b&gt;" in listing  # escaped
    page = rita.get(f"/appeals/{appeal_id}").text
    assert "You made the decision under appeal" in page and 'id="appeal-decide"' not in page
    csrf = login(rita, "rita")
    refused = rita.post(
        f"/appeals/{appeal_id}/decision",
        data={"csrf_token": csrf, "outcome": "upheld", "reasons": "r"},
        headers={"Accept": "text/html"},
    )
    assert refused.status_code == 403 and "another reviewer must decide this appeal" in refused.text

    rob = TestClient(app, follow_redirects=False)
    csrf = login(rob, "rob", ROB_PASSWORD)
    assert 'id="appeal-decide"' in rob.get(f"/appeals/{appeal_id}").text
    assert (
        rob.post(f"/appeals/{appeal_id}/decision", data={"outcome": "upheld", "reasons": "r"}).status_code == 403
    )  # CSRF
    r = rob.post(f"/appeals/{appeal_id}/decision", data={"csrf_token": csrf, "outcome": "reversed", "reasons": REASONS})
    assert r.status_code == 303 and r.headers["location"] == f"/appeals/{appeal_id}"
    decided = rob.get(f"/appeals/{appeal_id}").text
    assert "Outcome: reversed" in decided and REASONS in decided
    assert "No reversed appeals" not in rob.get("/appeals?state=reversed").text
    # The item page lists the appeal with its outcome.
    item_page = rob.get(f"/items/{blocked}").text
    assert f'href="/appeals/{appeal_id}"' in item_page and "reversed" in item_page
    # A client has no pages.
    plat = TestClient(app, follow_redirects=False)
    assert plat.get("/appeals", headers=bearer(tokens["plat"])).status_code == 403

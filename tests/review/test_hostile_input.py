"""Hostile values in URLs, forms and headers: same-site links only, 4xx (never 500) with the documented shape."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from moderator.review.links import safe_next

from .helpers import PASSWORDS, Seeded, item_id, login

OFF_SITE = [
    "/\\evil.com",
    "/\\/evil.com",
    "//evil.com",
    "/\t/evil.com",
    "/\n/evil.com",
    " //evil.com",
    "https://evil.com/queue",
    "javascript:alert(1)",
    "evil.com",
    "",
]
BIG = str(2**63)  # one past the largest id SQLite and PostgreSQL can hold


def _href(html: str, text: str) -> str:
    found = re.search(rf'<a href="([^"]*)">{re.escape(text)}</a>', html)
    assert found, f"no link {text!r}"
    return found.group(1)


def _hidden(html: str, name: str) -> str:
    found = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)">', html)
    assert found, f"no hidden {name}"
    return found.group(1)


@pytest.mark.parametrize("target", OFF_SITE)
def test_off_site_targets_become_the_queue(target: str) -> None:
    assert safe_next(target) == "/queue"


@pytest.mark.parametrize("target", ["/queue", "/queue?decision=block&page=2", "/items/3?back=%2Fqueue", "/account"])
def test_same_site_paths_are_kept(target: str) -> None:
    assert safe_next(target) == target


def test_item_page_back_link_stays_on_site(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["gore"])
    page = client.get(f"/items/{iid}?back=/%5Cevil.com")  # the reported link: /\evil.com
    assert page.status_code == 200
    assert _href(page.text, "← queue") == "/queue" and _hidden(page.text, "next") == "/queue"
    assert "evil.com" not in page.text
    kept = client.get(f"/items/{iid}", params={"back": "/queue?decision=review"})
    assert _href(kept.text, "← queue") == "/queue?decision=review"


@pytest.mark.parametrize("target", ["/\\evil.com", "//evil.com", "/\t/evil.com"])
def test_login_and_decision_redirects_stay_on_site(client: TestClient, seeded: Seeded, target: str) -> None:
    form = client.get("/login", params={"next": target})
    assert _hidden(form.text, "next") == "/queue"
    csrf = client.cookies["moderator_login_csrf"]
    r = client.post(
        "/login", data={"username": "rita", "password": PASSWORDS["rita"], "csrf_token": csrf, "next": target}
    )
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    session_csrf = login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["suggestive"])
    r = client.post(
        "/decisions", data={"item_ids": str(iid), "verdict": "confirm", "next": target, "csrf_token": session_csrf}
    )
    assert r.status_code == 303 and r.headers["location"] == "/queue"


def _is_validation_array(body: Any) -> bool:
    """The OpenAPI HTTPValidationError: detail is a list of {loc: [str|int], msg: str, type: str}."""
    detail = body.get("detail") if isinstance(body, dict) else None
    return (
        isinstance(detail, list)
        and bool(detail)
        and all(
            isinstance(e, dict)
            and isinstance(e.get("loc"), list)
            and all(isinstance(p, str | int) for p in e["loc"])
            and isinstance(e.get("msg"), str)
            and isinstance(e.get("type"), str)
            for e in detail
        )
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/items/{BIG}", None),
        ("GET", f"/items/{BIG}/image", None),
        ("GET", f"/api/items/{BIG}", None),
        ("POST", f"/api/items/{BIG}/decisions", {"verdict": "confirm"}),
        ("POST", "/api/decisions", {"verdict": "confirm", "item_ids": [int(BIG)]}),
        ("POST", "/api/decisions", {"verdict": "confirm", "item_ids": [-1]}),
        ("GET", "/api/queue?page=9223372036854775807", None),
        ("GET", "/queue?page=9223372036854775807", None),
        ("GET", "/api/queue?source=" + "x" * 60_000, None),
        ("GET", "/api/queue?policy=" + "p" * 5_000, None),
        ("GET", "/api/queue?min_score=nan", None),
        ("GET", "/api/queue?decision=bogus", None),
        ("GET", "/api/queue?colour=red", None),
        ("GET", "/api/items", None),  # neither uri nor sha256
        ("GET", "/api/items?sha256=" + "a" * 65, None),
        ("GET", "/api/jobs/" + "j" * 65, None),
        ("GET", "/admin/audit?page=9223372036854775807", None),
        ("DELETE", f"/api/tokens/{BIG}", None),
    ],
)
def test_out_of_range_is_a_422_with_the_documented_shape(client: TestClient, method: str, path: str, body: Any) -> None:
    csrf = login(client, "adam")
    r = client.request(method, path, json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert _is_validation_array(r.json()), r.text[:300]
    assert "x" * 100 not in r.text  # the hostile value is not echoed back


def test_every_422_the_api_answers_itself_has_the_array_shape(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["gore"])
    relabel = client.post(f"/api/items/{iid}/decisions", json={"verdict": "relabel"}, headers={"X-CSRF-Token": csrf})
    assert relabel.status_code == 422 and _is_validation_array(relabel.json())
    assert "relabel needs at least one label" in relabel.json()["detail"][0]["msg"]


def _raw(value: str) -> bytes:
    return value.encode("latin-1")


def _header(name: str, value: str) -> dict[bytes, bytes]:
    """A header of any bytes (httpx would refuse non-ASCII str values)."""
    return {name.encode(): _raw(value)}


@pytest.mark.parametrize("token", ["\xe9t\xe9", "metrics-secret\xff", "\x80"])
def test_non_ascii_bearer_tokens_are_plain_mismatches(client: TestClient, token: str) -> None:
    headers = _header("Authorization", f"Bearer {token}")
    assert client.get("/metrics", headers=headers).status_code == 401  # was a 500
    assert client.get("/api/queue", headers=headers).status_code == 401
    basic = _header("Authorization", f"Basic {token}")
    assert client.get("/api/queue", headers=basic).status_code == 401
    utf8 = "Basic " + base64.b64encode("rita:\u00e9\u00e9\u00e9".encode()).decode()
    assert client.get("/api/queue", headers={"Authorization": utf8}).status_code == 401


def test_non_ascii_csrf_tokens_are_refused_not_crashed(client: TestClient, seeded: Seeded) -> None:
    client.get("/login")
    r = client.post("/login", data={"username": "rita", "password": PASSWORDS["rita"], "csrf_token": "\u00e9\u00e9"})
    assert r.status_code == 403
    login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["gore"])
    r = client.post(
        f"/api/items/{iid}/decisions", json={"verdict": "confirm"}, headers=_header("X-CSRF-Token", "\xe9\xe9")
    )
    assert r.status_code == 403
    form = client.post("/decisions", data={"item_ids": str(iid), "verdict": "confirm", "csrf_token": "\u00e9"})
    assert form.status_code == 403

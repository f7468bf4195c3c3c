"""Who may see and do what: anonymous, wrong password, reviewer, admin, tokens, CSRF."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from moderator.review import users

from .helpers import PASSWORDS, Seeded, item_id, login, post_login

PROTECTED = [
    "/",
    "/queue",
    "/items/1",
    "/items/1/image",
    "/admin/users",
    "/admin/audit",
    "/account",
    "/docs",
    "/openapi.json",
    "/api/queue",
    "/api/items?uri=x",
    "/api/items/1",
    "/api/jobs/x",
    "/metrics",
]


def _basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_anonymous_sees_only_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in PROTECTED:
        r = client.get(path)
        assert r.status_code == 401, path
        assert "login required" in r.text
    for path in ("/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code in (401, 404)
    r = client.post("/api/items/1/decisions", json={"verdict": "confirm"})
    assert r.status_code == 401


def test_anonymous_browser_is_sent_to_login(client: TestClient) -> None:
    r = client.get("/queue?decision=block", headers={"Accept": "text/html"})
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fqueue%3Fdecision%3Dblock"
    page = client.get("/login")
    assert page.status_code == 200 and "Log in" in page.text


def test_wrong_password_and_disabled_user_cannot_log_in(client: TestClient) -> None:
    r = post_login(client, "rita", "nope-nope")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert "moderator_session" not in client.cookies
    assert post_login(client, "dora", PASSWORDS["dora"]).status_code == 401
    assert client.get("/api/queue", headers=_basic("dora", PASSWORDS["dora"])).status_code == 401


def test_login_form_needs_its_csrf_cookie(client: TestClient) -> None:
    r = client.post("/login", data={"username": "rita", "password": PASSWORDS["rita"], "csrf_token": "forged"})
    assert r.status_code == 403
    assert "moderator_session" not in client.cookies


def test_failed_logins_are_rate_limited_per_user_and_address(seeded: Seeded, client: TestClient) -> None:
    for _ in range(seeded.settings.login_max_failures):
        assert post_login(client, "rita", "wrong-guess").status_code == 401
    # Now even the right password is refused, by form and by Basic auth...
    assert post_login(client, "rita", PASSWORDS["rita"]).status_code == 429
    assert client.get("/api/queue", headers=_basic("rita", PASSWORDS["rita"])).status_code == 429
    # ...while another user from the same address is not locked out.
    assert login(client, "adam")


def test_session_cookie_flags_and_rotation(client: TestClient) -> None:
    r = post_login(client, "rita", PASSWORDS["rita"])
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    first = client.cookies["moderator_session"]
    login(client, "rita")
    assert client.cookies["moderator_session"] != first  # a new id at every login...
    old = TestClient(client.app, cookies={"moderator_session": first})
    assert old.get("/api/queue").status_code == 401  # ...and the old one is gone


def test_secure_cookie_over_https(app: object) -> None:
    client = TestClient(app, base_url="https://review.example", follow_redirects=False)  # type: ignore[arg-type]
    client.get("/login")
    r = client.post(
        "/login",
        data={
            "username": "rita",
            "password": PASSWORDS["rita"],
            "csrf_token": client.cookies.get("moderator_login_csrf"),
        },
    )
    assert "Secure" in r.headers["set-cookie"]


def test_logout_invalidates_the_session(client: TestClient) -> None:
    csrf = login(client, "rita")
    token = client.cookies["moderator_session"]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    replay = TestClient(client.app, cookies={"moderator_session": token})
    assert replay.get("/api/queue").status_code == 401


def test_idle_session_expires(seeded: Seeded, client: TestClient) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from moderator.store.tables import WebSession, utcnow

    login(client, "rita")
    assert client.get("/api/queue").status_code == 200
    idle = timedelta(minutes=seeded.settings.session_idle_minutes + 1)
    with Session(seeded.store.engine) as db:
        db.execute(update(WebSession).values(last_seen=utcnow() - idle))
        db.commit()
    assert client.get("/api/queue").status_code == 401


def test_csrf_missing_or_wrong_is_refused(seeded: Seeded, client: TestClient) -> None:
    csrf = login(client, "rita")
    iid = item_id(seeded.store, seeded.uris["suggestive"])
    form = {"item_ids": str(iid), "verdict": "confirm"}
    assert client.post("/decisions", data=form).status_code == 403
    assert client.post("/decisions", data={**form, "csrf_token": "wrong"}).status_code == 403
    assert client.post(f"/api/items/{iid}/decisions", json={"verdict": "confirm"}).status_code == 403
    assert client.post("/logout").status_code == 403
    assert client.get(f"/api/items/{iid}").json()["reviews"] == []
    r = client.post(f"/api/items/{iid}/decisions", json={"verdict": "confirm"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201


def test_reviewer_decides_but_cannot_manage_users(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "rita")
    assert client.get("/queue").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/api/scans"]
    assert client.get("/admin/users").status_code == 403
    assert client.get("/admin/audit").status_code == 403
    assert client.get("/metrics").status_code == 403
    r = client.post(
        "/admin/users", data={"name": "eve", "password": "eve-password", "role": "admin", "csrf_token": csrf}
    )
    assert r.status_code == 403
    r = client.post("/admin/users/dora/enable", data={"csrf_token": csrf})
    assert r.status_code == 403
    with Session(seeded.store.engine) as db:
        assert users.find_user(db, "eve") is None
        assert users.get_user(db, "dora").disabled


def test_admin_manages_users(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "adam")
    r = client.post(
        "/admin/users", data={"name": "eve", "password": "eve-password", "role": "reviewer", "csrf_token": csrf}
    )
    assert r.status_code == 303
    assert "eve" in client.get("/admin/users").text
    assert client.post("/admin/users/eve/disable", data={"csrf_token": csrf}).status_code == 303
    assert client.post("/admin/users/adam/disable", data={"csrf_token": csrf}).status_code == 422
    with Session(seeded.store.engine) as db:
        assert users.get_user(db, "eve").disabled
    assert client.get("/admin/audit").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_disabling_a_user_ends_their_session(client: TestClient, app: object, seeded: Seeded) -> None:
    login(client, "rita")
    admin = TestClient(app, follow_redirects=False)  # type: ignore[arg-type]
    csrf = login(admin, "adam")
    admin.post("/admin/users/rita/disable", data={"csrf_token": csrf})
    assert client.get("/api/queue").status_code == 401


def test_api_token_and_basic_auth_need_no_csrf(client: TestClient, seeded: Seeded) -> None:
    with Session(seeded.store.engine) as db:
        token = users.create_token(db, "rita", "ci")
        db.commit()
    iid = item_id(seeded.store, seeded.uris["gore"])
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/queue", headers=bearer).status_code == 200
    r = client.post(f"/api/items/{iid}/decisions", json={"verdict": "dismiss"}, headers=bearer)
    assert r.status_code == 201 and r.json()["reviewer"] == "rita" and r.json()["via"] == "api"
    assert client.get("/api/queue", headers={"Authorization": "Bearer mod_forged"}).status_code == 401
    r = client.post(
        f"/api/items/{iid}/decisions", json={"verdict": "confirm"}, headers=_basic("adam", PASSWORDS["adam"])
    )
    assert r.status_code == 201
    assert client.get("/api/queue", headers=_basic("adam", "wrong-password")).status_code == 401


def test_token_of_disabled_user_stops_working(client: TestClient, seeded: Seeded) -> None:
    with Session(seeded.store.engine) as db:
        token = users.create_token(db, "rita")
        users.set_disabled(db, "rita", True)
        db.commit()
    assert client.get("/api/queue", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_metrics_token(client: TestClient) -> None:
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret"})
    assert r.status_code == 200
    assert "moderator_review_queue_items 4.0" in r.text


@pytest.mark.parametrize("path", ["/account"])
def test_account_creates_a_working_token(client: TestClient, path: str) -> None:
    csrf = login(client, "rita")
    page = client.post("/account/tokens", data={"label": "laptop", "csrf_token": csrf})
    assert page.status_code == 200
    import re

    token = re.search(r"(mod_[A-Za-z0-9_-]+)", page.text)
    assert token
    fresh = TestClient(client.app)
    assert fresh.get("/api/queue", headers={"Authorization": f"Bearer {token.group(1)}"}).status_code == 200

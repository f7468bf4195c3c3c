"""API tokens: a user lists and revokes their own, an admin anyone's (API, account page, CLI)."""

from __future__ import annotations

import re

import typer
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from moderator.cli import users as users_cli
from moderator.review import users

from .helpers import Seeded, login


def _token(seeded: Seeded, name: str, label: str = "") -> str:
    with Session(seeded.store.engine) as db:
        token = users.create_token(db, name, label)
        db.commit()
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_user_lists_and_revokes_their_own_token(client: TestClient, seeded: Seeded) -> None:
    laptop, ci = _token(seeded, "rita", "laptop"), _token(seeded, "rita", "ci")
    _token(seeded, "adam", "admin-box")
    listed = client.get("/api/tokens", headers=_bearer(ci))
    assert listed.status_code == 200
    assert [(t["user"], t["label"], t["revoked"]) for t in listed.json()] == [
        ("rita", "ci", False),
        ("rita", "laptop", False),
    ]
    laptop_id = listed.json()[1]["id"]
    r = client.delete(f"/api/tokens/{laptop_id}", headers=_bearer(ci))
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert client.get("/api/queue", headers=_bearer(laptop)).status_code == 401  # stops at once
    assert client.get("/api/queue", headers=_bearer(ci)).status_code == 200  # the other one works
    # The user stays enabled: revoking a token no longer means disabling its user.
    with Session(seeded.store.engine) as db:
        assert not users.get_user(db, "rita").disabled


def test_another_users_tokens_are_out_of_reach_of_a_reviewer(client: TestClient, seeded: Seeded) -> None:
    mine = _token(seeded, "rita")
    admins = _token(seeded, "adam")
    with Session(seeded.store.engine) as db:
        ((adam_token, _),) = users.list_tokens(db, "adam")
    assert client.get("/api/tokens", params={"user": "adam"}, headers=_bearer(mine)).status_code == 403
    r = client.delete(f"/api/tokens/{adam_token.id}", headers=_bearer(mine))
    missing = client.delete("/api/tokens/999999", headers=_bearer(mine))
    assert r.status_code == missing.status_code == 404  # another's id reads as unknown
    assert r.json()["detail"].replace(str(adam_token.id), "N") == missing.json()["detail"].replace("999999", "N")
    assert client.get("/api/queue", headers=_bearer(admins)).status_code == 200


def test_an_admin_revokes_anyones_token(client: TestClient, seeded: Seeded) -> None:
    ritas = _token(seeded, "rita", "leaked")
    admin = _token(seeded, "adam")
    listed = client.get("/api/tokens", params={"user": "rita"}, headers=_bearer(admin)).json()
    assert [t["label"] for t in listed] == ["leaked"]
    assert client.delete(f"/api/tokens/{listed[0]['id']}", headers=_bearer(admin)).status_code == 200
    assert client.get("/api/queue", headers=_bearer(ritas)).status_code == 401
    assert client.get("/api/tokens", params={"user": "nobody"}, headers=_bearer(admin)).status_code == 404


def test_the_account_page_lists_and_revokes(client: TestClient, seeded: Seeded) -> None:
    csrf = login(client, "rita")
    made = client.post("/account/tokens", data={"label": "phone", "csrf_token": csrf})
    token = re.search(r"(mod_[A-Za-z0-9_-]+)", made.text)
    assert token and "phone" in made.text
    form = re.search(r'action="/account/tokens/(\d+)/revoke"', made.text)
    assert form
    assert client.post(f"/account/tokens/{form.group(1)}/revoke").status_code == 403  # CSRF
    r = client.post(f"/account/tokens/{form.group(1)}/revoke", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/account"
    assert "revoked" in client.get("/account").text
    assert TestClient(client.app).get("/api/queue", headers=_bearer(token.group(1))).status_code == 401


def test_cli_lists_and_revokes_tokens(client: TestClient, seeded: Seeded) -> None:
    cli = typer.Typer()
    cli.add_typer(users_cli.app, name="users")
    runner = CliRunner()
    db_opt = ["--database-url", seeded.settings.database_url]
    made = runner.invoke(cli, ["users", "token", "rita", "--label", "build", *db_opt])
    assert made.exit_code == 0, made.output
    token = made.output.strip()
    listing = runner.invoke(cli, ["users", "token", "list", "rita", *db_opt])
    assert listing.exit_code == 0, listing.output
    (line,) = [row for row in listing.output.splitlines() if "\tbuild\t" in row]
    token_id = line.split("\t")[0]
    assert line.split("\t")[1] == "rita" and line.endswith("active")
    revoked = runner.invoke(cli, ["users", "token", "revoke", token_id, *db_opt])
    assert revoked.exit_code == 0 and f"revoked token {token_id} of rita" in revoked.output
    assert client.get("/api/queue", headers=_bearer(token)).status_code == 401
    again = runner.invoke(cli, ["users", "token", "revoke", "424242", *db_opt])
    assert again.exit_code != 0 and "no API token 424242" in again.output

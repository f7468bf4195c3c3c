"""`moderator users` and `moderator review` from the terminal, on a seeded store."""

from __future__ import annotations

import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from moderator.cli import review, users

from .helpers import Seeded, item_id

cli = typer.Typer()
cli.add_typer(users.app, name="users")
cli.add_typer(review.app, name="review")
runner = CliRunner()


def _run(seeded: Seeded, *args: str, input: str | None = None) -> str:
    result = runner.invoke(cli, [*args, "--database-url", seeded.settings.database_url], input=input)
    assert result.exit_code == 0, result.output
    return result.output


def test_users_add_list_disable_and_token(seeded: Seeded, client: TestClient) -> None:
    _run(seeded, "users", "add", "vera", "--role", "admin", "--password", "vera-password")
    _run(seeded, "users", "add", "walt", input="walt-password\nwalt-password\n")
    listing = _run(seeded, "users", "list")
    assert (
        "vera\tadmin\tactive" in listing
        and "walt\treviewer\tactive" in listing
        and "dora\treviewer\tdisabled" in listing
    )
    token = _run(seeded, "users", "token", "walt").strip()
    assert client.get("/api/queue", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    _run(seeded, "users", "disable", "walt")
    assert client.get("/api/queue", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    bad = runner.invoke(
        cli, ["users", "add", "vera", "--password", "x", "--database-url", seeded.settings.database_url]
    )
    assert bad.exit_code == 2 and "at least 8" in bad.output


def test_review_list_and_decide(seeded: Seeded, client: TestClient) -> None:
    listing = _run(seeded, "review", "list", "--decision", "review")
    lines = [line.split("\t") for line in listing.splitlines() if "\t" in line]
    assert [line[4] for line in lines] == [seeded.uris[k] for k in ("suggestive", "gore", "hostile")]
    _run(seeded, "review", "decide", seeded.uris["gore"], "--label", "violence/gore", "--reviewer", "rita")
    out = _run(seeded, "review", "decide", str(item_id(seeded.store, seeded.uris["blocked"])), "--dismiss")
    assert "block -> allow (dismiss)" in out
    assert seeded.uris["gore"] not in _run(seeded, "review", "list")
    both = runner.invoke(
        cli, ["review", "decide", "1", "--confirm", "--dismiss", "--database-url", seeded.settings.database_url]
    )
    assert both.exit_code == 2 and "exactly one" in both.output

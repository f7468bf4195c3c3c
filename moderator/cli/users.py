"""`moderator users`: add, list, disable and enable review users; make API tokens."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.orm import Session

from moderator.cli.common import DatabaseOpt, fail, make_settings, open_store, out
from moderator.store.review_tables import Role

app = typer.Typer(
    help="Users of the review UI and API (reviewers decide; admins also manage users).", no_args_is_help=True
)


def _session(database_url: str | None) -> Session:
    return Session(open_store(make_settings(database_url=database_url)).engine, expire_on_commit=False)


@app.command("add")
def add(
    name: str,
    role: Annotated[Role, typer.Option("--role", help="reviewer or admin.")] = Role.REVIEWER,
    password: Annotated[
        str | None, typer.Option("--password", help="The password (asked for when left out; at least 8 characters).")
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Add a user."""
    from moderator.review import users

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _session(database_url) as db:
        try:
            users.add_user(db, name, role, password)
        except users.UserError as e:
            fail(str(e))
        db.commit()
    out.print(f"added {name} ({role.value})", highlight=False)


@app.command("list")
def list_users(database_url: DatabaseOpt = None) -> None:
    """Every user, with role and state."""
    from moderator.review import users

    with _session(database_url) as db:
        for u in users.list_users(db):
            state = "disabled" if u.disabled else "active"
            typer.echo(f"{u.name}\t{u.role}\t{state}\t{u.created_at:%Y-%m-%d}")


def _set_disabled(name: str, disabled: bool, database_url: str | None) -> None:
    from moderator.review import users

    with _session(database_url) as db:
        try:
            users.set_disabled(db, name, disabled)
        except users.UserError as e:
            fail(str(e))
        db.commit()
    out.print(f"{'disabled' if disabled else 'enabled'} {name}", highlight=False)


@app.command("disable")
def disable(name: str, database_url: DatabaseOpt = None) -> None:
    """Disable a user: their sessions end and their API tokens stop working."""
    _set_disabled(name, True, database_url)


@app.command("enable")
def enable(name: str, database_url: DatabaseOpt = None) -> None:
    """Enable a disabled user again (their old API tokens stay revoked)."""
    _set_disabled(name, False, database_url)


@app.command("token")
def token(
    name: str,
    label: Annotated[str, typer.Option("--label", help="What the token is for.")] = "",
    database_url: DatabaseOpt = None,
) -> None:
    """Make a personal API token for NAME (printed once: use it as `Authorization: Bearer TOKEN`)."""
    from moderator.review import users

    with _session(database_url) as db:
        try:
            value = users.create_token(db, name, label)
        except users.UserError as e:
            fail(str(e))
        db.commit()
    typer.echo(value)

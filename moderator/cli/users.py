"""`moderator users`: add, list, disable and enable review users; make API tokens."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy.orm import Session
from typer.core import TyperGroup

from moderator.cli.common import DatabaseOpt, fail, make_settings, open_store, out
from moderator.store.tables import Role

app = typer.Typer(
    help="Users of the review UI and API (reviewers decide; admins also manage users).", no_args_is_help=True
)


def _session(database_url: str | None, *, create: bool = False) -> Session:
    store = open_store(make_settings(database_url=database_url), create=create, announce=create)
    return Session(store.engine, expire_on_commit=False)


@app.command("add")
def add(
    name: str,
    role: Annotated[
        Role,
        typer.Option(
            "--role", help="reviewer, admin, or client (a platform: POST /api/moderate and its own items only)."
        ),
    ] = Role.REVIEWER,
    password: Annotated[
        str | None, typer.Option("--password", help="The password (asked for when left out; at least 8 characters).")
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Add a user."""
    from moderator.review import users

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _session(database_url, create=True) as db:
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


class _CreateByDefault(TyperGroup):
    """`users token NAME` makes a token (as it always did); `users token list|revoke ...` manage them."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's vendored click Context
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["create", *args]
        return super().parse_args(ctx, args)


tokens = typer.Typer(
    cls=_CreateByDefault,
    help="Personal API tokens: `users token NAME` (or `create NAME`) makes one; `list [NAME]`, `revoke ID`.",
    no_args_is_help=True,
)
app.add_typer(tokens, name="token")


@tokens.command("create")
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


@tokens.command("list")
def token_list(
    name: Annotated[str | None, typer.Argument(help="Whose tokens (everyone's when left out).")] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """API tokens, newest first: id, user, label, created, last used, state."""
    from moderator.review import users

    with _session(database_url) as db:
        try:
            rows = users.list_tokens(db, name)
        except users.UserError as e:
            fail(str(e))
    for t, owner in rows:
        used = f"{t.last_used:%Y-%m-%d %H:%M}" if t.last_used else "never"
        state = "revoked" if t.revoked else "active"
        typer.echo(f"{t.id}\t{owner}\t{t.label}\t{t.created_at:%Y-%m-%d %H:%M}\t{used}\t{state}")


@tokens.command("revoke")
def token_revoke(token_id: int, database_url: DatabaseOpt = None) -> None:
    """Revoke API token TOKEN_ID (ids from `users token list`); it stops working at once, its user stays enabled."""
    from moderator.review import users

    with _session(database_url) as db:
        try:
            _, owner = users.revoke_token(db, token_id, None)
        except users.UserError as e:
            fail(str(e))
        db.commit()
    out.print(f"revoked token {token_id} of {owner}", highlight=False)

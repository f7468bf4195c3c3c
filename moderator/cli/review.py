"""`moderator review`: the review queue and decisions from the terminal."""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy.orm import Session

from moderator.cli.common import DatabaseOpt, fail, make_settings, open_store, out
from moderator.types import Action

app = typer.Typer(help="Work through the review queue from the terminal.", no_args_is_help=True)


def _session(database_url: str | None) -> Session:
    return Session(open_store(make_settings(database_url=database_url)).engine, expire_on_commit=False)


@app.command("list")
def list_queue(
    decision: Annotated[Action | None, typer.Option(help="review or block (both by default).")] = None,
    policy: Annotated[str | None, typer.Option(help="Only items where this policy fired.")] = None,
    cls: Annotated[str | None, typer.Option("--class", help="Only items where a class of this name fired.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only items carrying this tag.")] = None,
    source: Annotated[str | None, typer.Option(help="Only items whose uri starts with this.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Updated at or after (ISO 8601).")] = None,
    min_score: Annotated[float | None, typer.Option(help="Top fired score at least this.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many items.")] = 50,
    database_url: DatabaseOpt = None,
) -> None:
    """Items waiting for a reviewer, most severe first: id, decision, top score, fired classes, uri."""
    from moderator.review import queries

    try:
        filters = queries.QueueFilters(
            decision=decision,
            policy=policy,
            cls=cls,
            tag=tag,
            source=source,
            since=since,
            min_score=min_score,
            per_page=max(1, min(limit, 500)),
        )
    except ValidationError as e:
        fail(str(e.errors()[0]["msg"]))
    with _session(database_url) as db:
        page = queries.queue(db, filters)
    for row in page.rows:
        score = f"{row.top_score:.3f}" if row.top_score is not None else "-"
        typer.echo(f"{row.id}\t{row.decision}\t{score}\t{','.join(row.fired)}\t{row.uri}")
    typer.echo(f"{len(page.rows)} of {page.total} waiting", err=True)


@app.command("decide")
def decide(
    item: Annotated[str, typer.Argument(help="Item id, uri or sha256.")],
    confirm: Annotated[bool, typer.Option("--confirm", help="The flag was right (the item is blocked).")] = False,
    dismiss: Annotated[bool, typer.Option("--dismiss", help="The flag was wrong (the item is allowed).")] = False,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Relabel: a right label, policy/class; repeatable.")
    ] = None,
    decision: Annotated[Action | None, typer.Option(help="The new decision, when not the verdict's default.")] = None,
    note: Annotated[str, typer.Option(help="Why.")] = "",
    reviewer: Annotated[str | None, typer.Option(help="Who decides (default: the login name).")] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Record a decision on one item: exactly one of --confirm, --dismiss or --label."""
    from moderator.review import decisions, queries
    from moderator.store.tables import Verdict

    chosen = [
        v for v, on in ((Verdict.CONFIRM, confirm), (Verdict.DISMISS, dismiss), (Verdict.RELABEL, bool(label))) if on
    ]
    if len(chosen) != 1:
        fail("give exactly one of --confirm, --dismiss or --label")
    try:
        d = decisions.DecisionIn(verdict=chosen[0], labels=label or [], note=note, decision=decision)
    except ValidationError as e:
        fail(str(e.errors()[0]["msg"]))
    with _session(database_url) as db:
        found = queries.resolve_item(db, item)
        if found is None:
            fail(f"no item {item!r} (give its id, uri or sha256)")
        try:
            review = decisions.decide(db, found, d, reviewer or getpass.getuser(), "cli")
        except decisions.DecisionError as e:
            fail(str(e))
        db.commit()
        out.print(f"{found.uri}: {review.old_decision} -> {review.new_decision} ({review.verdict})", highlight=False)

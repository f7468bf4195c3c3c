"""`moderator actions`: check the S3 action rules file, and read the audit of what was done."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moderator.cli.common import DatabaseOpt, fail, make_settings, open_store

app = typer.Typer(
    help="S3 actions on decisions: tag or quarantine s3:// objects (rules: MODERATOR_S3_ACTIONS).",
    no_args_is_help=True,
)


@app.command("check")
def check(
    rules: Annotated[
        Path | None, typer.Argument(help="The rules file (default: MODERATOR_S3_ACTIONS).", show_default=False)
    ] = None,
) -> None:
    """Read the rules file and print each rule as it will apply; exit 2 when it is not valid."""
    from moderator.actions.s3_plan import S3ActionsConfigError, load_config

    path = rules or make_settings().s3_actions
    if path is None:
        fail("no rules file: give one, or set MODERATOR_S3_ACTIONS")
    try:
        config = load_config(path)
    except S3ActionsConfigError as exc:
        fail(str(exc))
    typer.echo(f"{path}: {len(config.rules)} rules, tags {', '.join(config.tag_keys)}")
    for index, rule in enumerate(config.rules):
        typer.echo(rule.describe(index))


@app.command("list")
def list_(
    failed: Annotated[bool, typer.Option("--failed", help="Only the steps that failed (they are retried).")] = False,
    uri: Annotated[str | None, typer.Option("--uri", help="Only this item (s3://bucket/key).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 50,
    database_url: DatabaseOpt = None,
) -> None:
    """Every step tried on S3 objects, newest first: time, outcome, step, item, event, what it did."""
    from moderator.actions.s3 import action_log

    store = open_store(make_settings(database_url=database_url))
    for e in action_log(store, outcome="failed" if failed else None, uri=uri, limit=limit):
        fields = [f"{e.at:%Y-%m-%dT%H:%M:%SZ}", e.outcome, e.step, e.uri, f"{e.event_id} seq {e.seq}", e.detail]
        typer.echo("\t".join(fields))

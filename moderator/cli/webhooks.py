"""`moderator webhooks`: decision webhook endpoints (admin), their deliveries, and replays."""

from __future__ import annotations

from typing import Annotated

import typer

from moderator.cli.common import DatabaseOpt, fail, make_settings, open_store

app = typer.Typer(
    help="Decision webhooks: endpoints that receive signed item.decided and review.decided events.",
    no_args_is_help=True,
)


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@app.command("add")
def add(
    url: str,
    events: Annotated[
        str | None, typer.Option("--events", help="Event types, comma-separated: item.decided, review.decided (all).")
    ] = None,
    decisions: Annotated[
        str | None,
        typer.Option(
            "--decisions", help="Decisions, comma-separated, e.g. block,review (all); the new or the old one."
        ),
    ] = None,
    policies: Annotated[
        str | None, typer.Option("--policies", help="Policy names, comma-separated: events where one of them fired.")
    ] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Register an endpoint and print its signing secret (whsec_...); keep it: it is shown once here."""
    from moderator.actions.events import EVENT_TYPES
    from moderator.actions.webhooks import UrlRefused, check_url
    from moderator.store.deliveries import add_endpoint
    from moderator.types import Action

    settings = make_settings(database_url=database_url)
    try:
        check_url(url, allow_private=settings.webhook_allow_private)
    except UrlRefused as e:
        fail(str(e))
    kinds, wanted = _csv(events), _csv(decisions)
    bad = [k for k in kinds if k not in EVENT_TYPES] + [d for d in wanted if d not in {a.value for a in Action}]
    if bad:
        fail(
            f"unknown event type or decision {bad[0]!r}: events {', '.join(EVENT_TYPES)};"
            " decisions allow, tag, review, block"
        )
    store = open_store(settings, create=True, announce=True)
    ep = add_endpoint(store, url, events=kinds, decisions=wanted, policies=_csv(policies))
    typer.echo(f"endpoint {ep.id}\t{ep.url}")
    typer.echo(f"secret\t{ep.secret}")


@app.command("list")
def list_(database_url: DatabaseOpt = None) -> None:
    """Every endpoint: id, URL, filters (events, decisions, policies), enabled."""
    from moderator.store.deliveries import list_endpoints

    store = open_store(make_settings(database_url=database_url))
    for ep in list_endpoints(store):
        filters = [",".join(f) or "*" for f in (ep.events, ep.decisions, ep.policies)]
        typer.echo("\t".join([str(ep.id), ep.url, *filters, "enabled" if ep.enabled else "disabled"]))


@app.command("remove")
def remove(endpoint_id: int, database_url: DatabaseOpt = None) -> None:
    """Remove an endpoint (its deliveries not yet made are dropped)."""
    from moderator.store.deliveries import remove_endpoint

    store = open_store(make_settings(database_url=database_url))
    if not remove_endpoint(store, endpoint_id):
        fail(f"no endpoint {endpoint_id} (see `moderator webhooks list`)")
    typer.echo(f"removed endpoint {endpoint_id}")


@app.command("deliveries")
def deliveries(
    failed: Annotated[bool, typer.Option("--failed", help="Only deliveries given up on (replay them).")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 50,
    database_url: DatabaseOpt = None,
) -> None:
    """Deliveries, newest first: event, type, target, state, attempts, next attempt, last error."""
    from moderator.store.deliveries import list_deliveries
    from moderator.store.tables import DeliveryState

    store = open_store(make_settings(database_url=database_url))
    state = DeliveryState.FAILED if failed else None
    for d in list_deliveries(store, state=state, limit=limit):
        when = (
            f"{d.delivered_at:%Y-%m-%dT%H:%M:%SZ}" if d.delivered_at else f"next {d.next_attempt_at:%Y-%m-%dT%H:%M:%SZ}"
        )
        fields = [d.event_id, d.event_type, f"{d.kind}:{d.target}", f"item {d.item_id} seq {d.seq}", str(d.state)]
        fields += [f"attempts {d.attempts}", when, d.last_error or ""]
        typer.echo("\t".join(fields))


@app.command("replay")
def replay(event_id: str, database_url: DatabaseOpt = None) -> None:
    """Send an event again to every endpoint (and action) that wants it now; `moderator deliver` sends it."""
    from moderator.actions.deliver import Deliverer
    from moderator.store import deliveries as ledger

    settings = make_settings(database_url=database_url)
    store = open_store(settings)
    deliverer = Deliverer(store, settings)
    deliverer.refresh()
    queued = ledger.replay(store, event_id, deliverer.targets_of)
    if queued is None:
        fail(f"no event {event_id} (see `moderator webhooks deliveries`)")
    typer.echo(f"queued {queued} deliveries of {event_id}")

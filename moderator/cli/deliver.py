"""`moderator deliver`: send decision events to webhook endpoints and the other action performers."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from moderator.cli.common import DatabaseOpt, console, fail, make_settings, open_store


def deliver(
    once: Annotated[
        bool, typer.Option("--once", help="Deliver what is due now, then exit (later retries stay scheduled).")
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Deliver decision events (webhooks, S3 actions) from the outbox until stopped; run any number of replicas."""
    from moderator.actions.deliver import Deliverer
    from moderator.actions.s3_plan import S3ActionsConfigError

    settings = make_settings(database_url=database_url)
    store = open_store(settings, create=True, announce=True)
    try:
        deliverer = Deliverer(store, settings)
    except S3ActionsConfigError as exc:  # MODERATOR_S3_ACTIONS names a file that does not load
        fail(f"{exc} (check it with `moderator actions check`)")
    if once:
        deliverer.run_until_idle()
        typer.echo(f"delivered {deliverer.delivered} of {deliverer.attempts} attempts")
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"delivering as {deliverer.owner} ({', '.join(sorted(deliverer.performers)) or 'no performers'})")
    deliverer.run(stop)

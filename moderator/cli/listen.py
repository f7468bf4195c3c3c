"""`moderator listen --sqs QUEUE_URL`: S3 event notifications from SQS become scan jobs."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated, Any

import typer

from moderator.cli.common import DatabaseOpt, console, fail, make_settings, open_store


def listen(
    sqs: Annotated[
        str,
        typer.Option(
            "--sqs",
            metavar="QUEUE_URL",
            help="URL of the SQS queue that receives the bucket's event notifications (directly or through SNS).",
        ),
    ],
    database_url: DatabaseOpt = None,
    broker_url: Annotated[
        str | None, typer.Option("--broker-url", help="Celery broker URL jobs go to (env MODERATOR_BROKER_URL).")
    ] = None,
    wait_seconds: Annotated[int, typer.Option("--wait-seconds", min=0, max=20, help="SQS long-poll wait.")] = 20,
    max_messages: Annotated[
        int | None,
        typer.Option("--max-messages", min=1, help="Stop after this many messages (default: run until stopped)."),
    ] = None,
) -> None:
    """Long-poll SQS for S3 events: new objects are enqueued for scanning, removed ones marked deleted.

    A message is deleted only after its objects were enqueued; duplicate and out-of-order
    events are dropped by their sequencer; malformed messages are logged and left for the
    queue's dead-letter policy. AWS credentials, region and AWS_ENDPOINT_URL come from the
    standard AWS environment. Stop with Ctrl-C or SIGTERM.
    """
    from moderator.s3events.handler import QueueUnavailable, queue_submit
    from moderator.s3events.sqs import listen_sqs

    settings = make_settings(database_url=database_url, broker_url=broker_url)
    try:
        submit = queue_submit(settings)
    except QueueUnavailable as exc:
        fail(str(exc))
    store = open_store(settings, create=True, announce=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        console.print("stopping after the current poll...")
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    console.print(f"listening on {sqs}", highlight=False)
    try:
        stats = listen_sqs(
            sqs, settings, submit, max_messages=max_messages, wait_seconds=wait_seconds, stop=stop, store=store
        )
    except Exception as exc:  # bad queue URL, no credentials: one line
        fail(f"cannot listen on {sqs}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(
        f"received {stats.received} messages: {stats.submitted} objects enqueued, {stats.deleted} marked deleted, "
        f"{stats.dropped} duplicate or stale events dropped, {stats.malformed} malformed",
        highlight=False,
    )

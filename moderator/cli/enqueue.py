"""`moderator enqueue`: paths and URIs become a job on the queue; prints the job id."""

from __future__ import annotations

from typing import Annotated

import typer

from moderator.cli.common import DatabaseOpt, PolicyOpt, console, fail, make_settings, out


def enqueue(
    paths: Annotated[
        list[str], typer.Argument(help="Files, folders, archives or source URIs (e.g. s3://bucket/prefix).")
    ],
    policy: PolicyOpt = None,
    database_url: DatabaseOpt = None,
    broker_url: Annotated[
        str | None, typer.Option("--broker-url", help="Celery broker URL (env MODERATOR_BROKER_URL).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress until the job ends (as `moderator jobs JOB --wait`).")
    ] = False,
) -> None:
    """Queue a scan for the workers and print its job id.

    Items are listed here and sent by reference (uri, size, fingerprint), never as bytes: the
    workers must reach the same files (a shared volume) or bucket. Policy files given with
    --policy must be readable by the workers at the same path; without --policy the workers
    use their own configured policies.
    """
    from moderator.queue import enqueue_targets

    settings = make_settings(database_url=database_url, broker_url=broker_url)
    try:
        job_id = enqueue_targets(paths, settings, [str(p) for p in policy] if policy else None)
    except ValueError as exc:
        fail(str(exc))
    except Exception as exc:  # broker or database unreachable: one line, not a traceback
        fail(f"could not enqueue: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    out.print(job_id, highlight=False)
    if wait:
        from moderator.cli.jobs import wait_for

        raise typer.Exit(wait_for(settings, job_id))
    console.print(f"follow it with: moderator jobs {job_id} --wait", highlight=False)

"""`moderator jobs [JOB] [--wait]`: progress of queued scans, read from the database."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderator.cli.common import DatabaseOpt, console, error, fail, make_settings, open_store, out, warn
from moderator.settings import Settings
from moderator.store import JobInfo, JobState

FINISHED = (JobState.DONE, JobState.FAILED)


def remaining(job: JobInfo) -> int | None:
    return None if job.total is None else max(0, job.total - job.done - job.errors - job.skipped)


def rate(job: JobInfo) -> float:
    """Items per second since the job was created."""
    seconds = (job.updated_at - job.created_at).total_seconds()
    handled = job.done + job.errors + job.skipped
    return handled / seconds if seconds > 0 else 0.0


def not_run_lines(job: JobInfo) -> list[str]:
    """One line per cause ("nsfw, violence: <why>") for the policies a worker could not run in this job."""
    by_reason: dict[str, list[str]] = {}
    for policy, reason in sorted(job.policies_not_run.items()):
        by_reason.setdefault(reason, []).append(policy)
    return [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def warn_not_run(jobs: list[JobInfo]) -> None:
    """As `scan` says it: the policies that did not run, and why (a job reads done, yet they gave no verdict)."""
    for job in jobs:
        for line in not_run_lines(job):
            warn(line if len(jobs) == 1 else f"job {job.id}: {line}", label="not run")


def as_dict(job: JobInfo) -> dict[str, object]:
    return {
        "id": job.id,
        "state": job.state.value,
        "total": job.total,
        "done": job.done,
        "errors": job.errors,
        "skipped": job.skipped,
        "remaining": remaining(job),
        "rate": round(rate(job), 2),
        "message": job.message,
        "policies_not_run": [{"policy": p, "reason": r} for p, r in sorted(job.policies_not_run.items())],
        "targets": job.targets,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }


def jobs_table(jobs: list[JobInfo]) -> Table:
    table = Table(title="jobs (newest first)")
    for name in ("job", "state", "done", "errors", "skipped", "remaining", "img/s", "created", "targets"):
        table.add_column(
            name, justify="right" if name in ("done", "errors", "skipped", "remaining", "img/s") else "left"
        )
    for j in jobs:
        left = remaining(j)
        table.add_row(
            j.id,
            j.state.value,
            str(j.done),
            str(j.errors),
            str(j.skipped),
            "?" if left is None else str(left),
            f"{rate(j):.1f}",
            j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            ", ".join(j.targets)[:60],
        )
    return table


def wait_for(settings: Settings, job_id: str, poll: float = 1.0) -> int:
    """Live progress until the job ends; 0 when done, 1 when failed, 2 for an unknown job."""
    store = open_store(settings)
    try:
        job = store.get_job(job_id)
        if job is None:
            error(f"no job {job_id}")
            return 2
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
        )
        with Progress(*columns, TimeElapsedColumn(), console=console, disable=not console.is_terminal) as bar:
            task = bar.add_task(job.state.value, total=job.total, info="")
            while True:
                handled = job.done + job.errors + job.skipped
                info = f"{job.errors} errors, {rate(job):.1f} img/s"
                bar.update(task, completed=handled, total=job.total, description=job.state.value, info=info)
                if job.state in FINISHED:
                    break
                time.sleep(poll)
                job = store.get_job(job_id) or job
        line = f"job {job.id} {job.state.value}: {job.done} done, {job.errors} errors, {job.skipped} skipped"
        console.print(line + (f" ({job.message})" if job.message else ""), highlight=False)
        warn_not_run([job])
        return 1 if job.state is JobState.FAILED else 0
    finally:
        store.close()


def jobs(
    job: Annotated[str | None, typer.Argument(help="One job's id (default: list recent jobs).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow JOB until it ends; exit 1 if it failed.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Jobs listed.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List queued scans with their progress (done, errors, remaining, rate), or follow one with --wait."""
    settings = make_settings(database_url=database_url)
    if wait:
        if job is None:
            fail("--wait needs a job id")
        raise typer.Exit(wait_for(settings, job))
    store = open_store(settings)
    try:
        found = [store.get_job(job)] if job else store.list_jobs(limit)
    finally:
        store.close()
    if job and found[0] is None:
        fail(f"no job {job}")
    listed = [j for j in found if j is not None]
    if as_json:
        out.print_json(json.dumps([as_dict(j) for j in listed]))
    elif listed:
        out.print(jobs_table(listed))
        warn_not_run(listed)
    else:
        console.print("no jobs yet: queue one with `moderator enqueue PATH`")
    if job and listed[0].state is JobState.FAILED:
        raise typer.Exit(1)

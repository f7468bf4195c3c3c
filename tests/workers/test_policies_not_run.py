"""A worker that cannot run some policies (no CLIP weights) says so: in the job, its log and `moderator jobs`.

Without this a job read `done` with no message, and users believed the CLIP policies had run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer import Typer
from typer.testing import CliRunner

from moderator.cli.jobs import jobs
from moderator.queue import enqueue_targets
from moderator.settings import SHIPPED_POLICIES
from moderator.store import JobState, Store
from tests.workers.conftest import TAGS_POLICY, Worker, make_settings, settings_env, wait_job, write_images

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _jobs_app() -> Typer:
    app = Typer()
    app.command()(jobs)
    return app


def test_policies_a_worker_cannot_run_are_named_with_the_reason(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    # No such CLIP weights here: the tags policy (CLIP) cannot run; the exact hash list still does.
    settings = make_settings(
        tmp_path, redis_url, pretrained="no_such_tag", policies=[TAGS_POLICY, SHIPPED_POLICIES / "known_bad.yaml"]
    )
    store = Store(settings.database_url)
    worker = start_worker(settings_env(settings), "--pool=solo")
    job_id = enqueue_targets([str(write_images(tmp_path / "photos", 3)[0].parent)], settings)

    job = wait_job(store, job_id, 120, workers=[worker])
    assert (job.state, job.done, job.errors) == (JobState.DONE, 3, 0)
    assert list(job.policies_not_run) == ["tags"] and "no_such_tag" in job.policies_not_run["tags"]
    reason = job.policies_not_run["tags"]

    listing = CliRunner().invoke(_jobs_app(), ["--json", "--database-url", settings.database_url])
    assert listing.exit_code == 0, listing.output
    (row,) = [j for j in json.loads(listing.stdout) if j["id"] == job_id]
    assert row["state"] == "done" and row["policies_not_run"] == [{"policy": "tags", "reason": reason}]

    waited = CliRunner().invoke(_jobs_app(), [job_id, "--wait", "--database-url", settings.database_url])
    assert waited.exit_code == 0
    assert f"not run: tags: {reason}" in waited.output

    table = CliRunner().invoke(_jobs_app(), [job_id, "--database-url", settings.database_url])
    assert f"not run: tags: {reason}" in table.output
    assert "policies not run in this worker: tags: " in worker.text()

    # Only policies it cannot run: the job fails at once, saying which and why (nothing was scored).
    only_clip = enqueue_targets(
        [str(write_images(tmp_path / "more", 2, seed=9)[0].parent)], settings, [str(TAGS_POLICY)]
    )
    failed = wait_job(store, only_clip, 120, workers=[worker])
    assert failed.state is JobState.FAILED and failed.done == 0
    assert f"none of the policies can run in this worker (tags: {reason})" in (failed.message or "")
    waited = CliRunner().invoke(_jobs_app(), [only_clip, "--wait", "--database-url", settings.database_url])
    assert waited.exit_code == 1 and "none of the policies can run" in waited.output
    store.close()

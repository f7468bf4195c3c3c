"""One real worker for the module: queued scans give what in-process scans give.

A queued job and an in-process scan of the same folder store the same items with the same
decisions and scores (test-tiny is seeded: same weights in every process; the scores
themselves mean nothing). Bad files are recorded, the job completes; policy edits reach the
running worker; its metrics can be scraped.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer import Typer
from typer.testing import CliRunner

from moderator.cli.jobs import jobs
from moderator.pipeline import Pipeline
from moderator.queue import enqueue_targets
from moderator.settings import Settings
from moderator.store import ExportFilters, JobState, Store
from moderator.types import ItemStatus
from tests.workers.conftest import TAGS_POLICY, Worker, free_port, make_settings, settings_env, wait_job, write_images

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Worker, Path]]:
    root = tmp_path_factory.mktemp("queue")
    policy = root / "policies" / "tags.yaml"
    policy.parent.mkdir()
    shutil.copy(TAGS_POLICY, policy)
    settings = make_settings(root, redis_url, policies=[policy], worker_metrics_port=free_port())
    worker = Worker(settings_env(settings), root / "worker.log")
    yield settings, worker, root
    worker.stop()


@pytest.fixture(scope="module")
def store(env: tuple[Settings, Worker, Path]) -> Iterator[Store]:
    s = Store(env[0].database_url)
    yield s
    s.close()


def by_uri(store: Store, prefix: str) -> dict[str, object]:
    return {r.uri: r for r in store.iter_export(ExportFilters(uri_prefix=prefix))}


def test_queued_folder_matches_in_process_scan(env: tuple[Settings, Worker, Path], store: Store) -> None:
    settings, worker, root = env
    folder = root / "same"
    write_images(folder, 10)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")

    job_id = enqueue_targets([str(folder)], settings)
    job = wait_job(store, job_id, 120, workers=[worker])
    assert (job.state, job.total, job.done, job.errors) == (JobState.DONE, 12, 10, 2)

    local = Store(f"sqlite:///{root / 'in_process.db'}")
    try:
        Pipeline(settings.model_copy(update={"database_url": str(local.url)}), local).scan_targets([str(folder)])
        expected = by_uri(local, str(folder))
    finally:
        local.close()
    queued = by_uri(store, str(folder))
    assert sorted(queued) == sorted(expected) and len(queued) == 12
    for uri, want in expected.items():
        got = queued[uri]
        assert (got.status, got.decision, got.sha256, got.error) == (
            want.status,
            want.decision,
            want.sha256,
            want.error,
        )
        assert got.policy_versions == want.policy_versions
        for policy, scores in want.scores.items():
            assert got.scores[policy] == pytest.approx(
                scores, abs=1e-3
            )  # float16 embeddings, maybe another thread count


def test_bad_files_are_recorded_and_the_job_completes(env: tuple[Settings, Worker, Path], store: Store) -> None:
    settings, worker, root = env
    folder = root / "bad"
    write_images(folder, 2, seed=50)
    (folder / "truncated.jpg").write_bytes(write_images(root / "tmp", 1, seed=60)[0].read_bytes()[:200])
    (folder / "text.jpg").write_text("hello")
    job_id = enqueue_targets([str(folder)], settings)

    result = CliRunner().invoke(_jobs_app(), [job_id, "--wait", "--database-url", settings.database_url])
    assert result.exit_code == 0, result.output
    job = store.get_job(job_id)
    assert job is not None and (job.state, job.done, job.errors) == (JobState.DONE, 2, 2)
    rows = by_uri(store, str(folder))
    errors = {Path(u).name: r.error for u, r in rows.items() if r.status is ItemStatus.ERROR or r.status == "error"}
    assert sorted(errors) == ["text.jpg", "truncated.jpg"] and all(errors.values())

    listing = CliRunner().invoke(_jobs_app(), ["--json", "--database-url", settings.database_url])
    assert listing.exit_code == 0 and job_id in listing.output


def test_policy_edits_reach_the_worker_and_invalid_ones_are_refused(
    env: tuple[Settings, Worker, Path], store: Store
) -> None:
    settings, worker, root = env
    policy = settings.policies[0]
    first = enqueue_targets([str(write_images(root / "p1", 2, seed=70)[0].parent)], settings)
    wait_job(store, first, 60, workers=[worker])
    v1 = next(iter(by_uri(store, str(root / "p1")).values())).policy_versions["tags"]

    good = policy.read_text()
    policy.write_text(good + "\nunknown_field: 1\n")
    _touch(policy)
    second = enqueue_targets([str(write_images(root / "p2", 2, seed=80)[0].parent)], settings)
    assert wait_job(store, second, 60, workers=[worker]).state is JobState.DONE
    assert {r.policy_versions["tags"] for r in by_uri(store, str(root / "p2")).values()} == {v1}
    log = worker.text()
    assert f"{policy}:" in log and "unknown_field" in log  # the file and line of the bad edit

    policy.write_text(good.replace("{}.", "{}!", 1) if "{}." in good else good + "\n# edited\ndescription: edited\n")
    _touch(policy)
    third = enqueue_targets([str(write_images(root / "p3", 2, seed=90)[0].parent)], settings)
    wait_job(store, third, 60, workers=[worker])
    v3 = {r.policy_versions["tags"] for r in by_uri(store, str(root / "p3")).values()}
    assert len(v3) == 1 and v3 != {v1}


def test_metrics_are_served(env: tuple[Settings, Worker, Path], store: Store) -> None:
    settings, worker, root = env
    job_id = enqueue_targets([str(write_images(root / "m", 3, seed=100)[0].parent)], settings)
    wait_job(store, job_id, 60, workers=[worker])
    url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    scanned = [line for line in text.splitlines() if line.startswith('moderator_worker_items_total{status="scanned"}')]
    assert scanned and float(scanned[0].split()[-1]) >= 3
    assert "moderator_worker_batch_seconds_bucket" in text
    assert f'moderator_queue_depth{{queue="{settings.queue_name}"}} 0.0' in text


def _jobs_app() -> Typer:
    app = Typer()
    app.command()(jobs)
    return app


def _touch(path: Path) -> None:
    later = time.time_ns() + 2_000_000_000  # a distinct mtime even on coarse-grained filesystems
    os.utime(path, ns=(later, later))

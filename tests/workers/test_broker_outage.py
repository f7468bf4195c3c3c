"""Redis stopped for 20 s in the middle of a job: the job still finishes, each item scored once.

Each test runs its own redis-server (tests/workers/conftest.py RedisServer), stops it while a
real worker is mid-job and starts it again on the same port:
- without persistence, the restart comes back empty: every queued message is gone, and the
  worker's repair check (MODERATOR_QUEUE_REPAIR_INTERVAL) finds the job's lost batches in its
  ledger and sends them again;
- with persistence and the repair check off, a batch whose retry cannot be published while
  Redis is down must stay unacknowledged and come back (Celery would drop it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from moderator.queue import enqueue_targets
from moderator.store import BatchState, ExportFilters, JobBatches, JobState, Store
from tests.workers.conftest import RedisServer, Worker, make_settings, settings_env, wait_job, write_images
from tests.workers.testsource import SCHEME

pytestmark = [pytest.mark.redis, pytest.mark.slow]
OUTAGE_S = 20
N = 24


def statuses(store: Store) -> dict[str, str]:
    return {Path(r.uri).name: str(r.status) for r in store.iter_export(ExportFilters())}


def scanned_per_item_sum(workers: list[Worker]) -> int:
    return sum(int(line["scanned"]) for w in workers for line in w.batch_lines())


def test_redis_restarted_empty_mid_job_the_lost_batches_are_sent_again(
    tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    broker = RedisServer()  # no persistence: what was queued is gone after the restart
    broker.start()
    try:
        settings = make_settings(tmp_path, broker.url, visibility_timeout=10, queue_repair_interval=2)
        write_images(tmp_path / "photos", N)
        store = Store(settings.database_url)
        worker = start_worker(settings_env(settings, TESTSRC_READ_DELAY="0.25"), "--pool=prefork", "--concurrency=1")
        job_id = enqueue_targets([SCHEME + str(tmp_path / "photos")], settings)
        wait_job(store, job_id, 120, until=lambda j: j.done >= 8, workers=[worker])

        broker.stop()
        time.sleep(OUTAGE_S)
        assert (store.get_job(job_id) or pytest.fail()).state is JobState.RUNNING
        broker.start()

        job = wait_job(store, job_id, 120, workers=[worker])
        assert (job.state, job.total, job.done, job.errors, job.skipped) == (JobState.DONE, N, N, 0, 0), job
        rows = statuses(store)
        assert len(rows) == N and set(rows.values()) == {"ok"}
        assert scanned_per_item_sum([worker]) == N  # each item scored exactly once: no batch ran twice
        assert set(JobBatches(store).states(job_id).values()) <= {BatchState.DONE, BatchState.SPLIT}
        assert "sent again" in worker.text()  # found and repaired by the worker, not by a person
        store.close()
    finally:
        broker.stop()


def test_a_retry_that_cannot_be_published_is_not_acknowledged(
    tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    broker = RedisServer(data_dir=tmp_path / "redis")  # keeps its data across the restart
    broker.start()
    state = tmp_path / "state"
    state.mkdir()
    try:
        # No repair check: only the message itself can bring the batch back.
        settings = make_settings(tmp_path, broker.url, visibility_timeout=10, queue_repair_interval=0)
        names = lambda i: f"img{i:03d}_flaky.jpg" if i == 10 else f"img{i:03d}.jpg"  # noqa: E731
        write_images(tmp_path / "photos", N, names=names)
        store = Store(settings.database_url)
        env = settings_env(settings, TESTSRC_READ_DELAY="0.1", TESTSRC_STATE=str(state))
        worker = start_worker(env, "--pool=prefork", "--concurrency=1")
        job_id = enqueue_targets([SCHEME + str(tmp_path / "photos")], settings)

        deadline = time.monotonic() + 120
        while not (state / "flaky.started").exists():  # the worker is reading the flaky item
            assert time.monotonic() < deadline, worker.text()[-3000:]
            time.sleep(0.1)
        broker.stop()
        (state / "flaky.go").touch()  # its read now fails transiently: a retry, while Redis is down
        time.sleep(OUTAGE_S)
        broker.start()

        job = wait_job(store, job_id, 150, workers=[worker])
        log = worker.text()
        assert (job.state, job.total, job.done, job.errors, job.skipped) == (JobState.DONE, N, N, 0, 0), log[-3000:]
        rows = statuses(store)
        assert len(rows) == N and set(rows.values()) == {"ok"}
        assert "could not publish the retry" in log
        store.close()
    finally:
        broker.stop()

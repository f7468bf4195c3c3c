"""Workers that die or lose their database: nothing is lost, nothing is counted twice.

Each test starts its own workers (short visibility timeout) on a private redis-server; the
`testsrc://` plugin (tests/workers/testsource.py) slows reads so a test can act mid-job, and
ends the process on files named *poison*.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import make_url

from moderator.queue import enqueue_targets
from moderator.store import ExportFilters, JobState, Store
from moderator.types import ItemStatus
from tests.workers.conftest import Worker, make_settings, settings_env, wait_job, write_images
from tests.workers.tcpproxy import TcpProxy
from tests.workers.testsource import MEMHOG, SCHEME

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def statuses(store: Store) -> dict[str, tuple[str, str | None]]:
    return {Path(r.uri).name: (str(r.status), r.error) for r in store.iter_export(ExportFilters())}


def test_sigkilled_worker_loses_nothing_and_counts_nothing_twice(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    settings = make_settings(tmp_path, redis_url, visibility_timeout=10)
    write_images(tmp_path / "photos", 16)
    store = Store(settings.database_url)
    env = settings_env(settings, TESTSRC_READ_DELAY="0.25")
    first = start_worker(env, "--pool=solo")
    job_id = enqueue_targets([SCHEME + str(tmp_path / "photos")], settings)
    wait_job(store, job_id, 90, until=lambda j: j.done >= 4, workers=[first])
    first.kill()  # SIGKILL to the whole process group, mid-job
    killed_at = time.monotonic()
    assert (store.get_job(job_id) or pytest.fail()).done < 16

    second = start_worker(env, "--pool=solo")
    job = wait_job(store, job_id, 90, workers=[second])
    assert (job.state, job.total, job.done, job.errors) == (JobState.DONE, 16, 16, 0)
    rows = statuses(store)
    assert len(rows) == 16 and {s for s, _ in rows.values()} == {ItemStatus.OK.value}
    assert time.monotonic() - killed_at < 75  # redelivered after the 10 s visibility timeout, not an hour

    def handled() -> int:
        return sum(int(line["scanned"]) + int(line["unchanged"]) for w in (first, second) for line in w.batch_lines())

    # A batch stored just before the kill, but not acknowledged, comes back after the visibility
    # timeout even when the job is already done: it is recognised as a copy, and counts nothing.
    deadline = time.monotonic() + 40
    while handled() < 16 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert handled() >= 16
    final = store.get_job(job_id) or pytest.fail()
    assert (final.state, final.done, final.errors) == (JobState.DONE, 16, 0)


def test_poison_item_is_quarantined_and_the_rest_of_its_batch_is_scored(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    settings = make_settings(tmp_path, redis_url, queue_batch_size=4, max_deliveries=3)
    folder = tmp_path / "photos"
    write_images(folder, 4, names=lambda i: "b_poison.jpg" if i == 1 else f"img{i}.jpg")
    store = Store(settings.database_url)
    worker = start_worker(settings_env(settings), "--pool=prefork", "--concurrency=1")
    job_id = enqueue_targets([SCHEME + str(folder)], settings)

    job = wait_job(store, job_id, 150, workers=[worker])
    assert (job.state, job.total, job.done, job.errors) == (JobState.DONE, 4, 3, 1)
    rows = statuses(store)
    assert rows.pop("b_poison.jpg") == ("error", "quarantined: worker died 3 times on this item")
    assert sorted(rows) == ["img0.jpg", "img2.jpg", "img3.jpg"] and {s for s, _ in rows.values()} == {"ok"}
    assert worker.proc.poll() is None  # the pool replaced its dead children; the worker lives on


@pytest.mark.postgres
def test_database_outage_is_retried_and_nothing_is_lost(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., Worker], pg_url: str
) -> None:
    direct = pg_url
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    via_proxy = make_url(direct).set(port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings(tmp_path, redis_url, database_url=direct, visibility_timeout=20)
    write_images(tmp_path / "photos", 16)
    store = Store(direct)
    worker = start_worker(settings_env(settings, MODERATOR_DATABASE_URL=via_proxy, TESTSRC_READ_DELAY="0.25"))
    try:
        job_id = enqueue_targets([SCHEME + str(tmp_path / "photos")], settings)
        wait_job(store, job_id, 90, until=lambda j: j.done >= 4, workers=[worker])
        proxy.stop()  # the database vanishes mid-job for a while
        time.sleep(6)
        proxy.start()
        job = wait_job(store, job_id, 90, workers=[worker])
    finally:
        proxy.stop()
        store.close()
    assert (job.state, job.total, job.done, job.errors) == (JobState.DONE, 16, 16, 0), worker.text()[-2000:]
    assert "transient error, retry" in worker.text(), worker.text()
    reopened = Store(direct)
    try:
        rows = statuses(reopened)
    finally:
        reopened.close()
    assert len(rows) == 16 and {s for s, _ in rows.values()} == {"ok"}


def test_a_split_job_whose_items_all_got_a_record_ends_done(
    redis_url: str, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    # A huge image, as a worker meets it: MemoryError on the first try, the OOM killer on the next ones
    # (the testfault scorer). The job used to read `failed` for good after the MemoryError.
    policy = tmp_path / "faults.yaml"
    policy.write_text(
        "name: faults\ndescription: test-only byte scorer\nmode: multilabel\nscorer: testfault\n"
        "classes:\n  hit:\n    threshold: 1.0\n    action: block\n"
    )
    state = tmp_path / "state"
    state.mkdir()
    settings = make_settings(tmp_path, redis_url, queue_batch_size=4, max_deliveries=3, policies=[policy])
    folder = tmp_path / "photos"
    write_images(folder, 4)
    hog = folder / "img001.jpg"
    hog.write_bytes(hog.read_bytes() + MEMHOG)
    store = Store(settings.database_url)
    worker = start_worker(settings_env(settings, TESTSRC_STATE=str(state)), "--pool=prefork", "--concurrency=1")
    job_id = enqueue_targets([SCHEME + str(folder)], settings)

    job = wait_job(store, job_id, 150, workers=[worker])
    assert (job.state, job.total, job.done, job.errors, job.message) == (JobState.DONE, 4, 3, 1, None), worker.text()
    rows = statuses(store)
    assert rows.pop("img001.jpg") == ("error", "quarantined: worker died 3 times on this item")
    assert sorted(rows) == ["img000.jpg", "img002.jpg", "img003.jpg"] and {s for s, _ in rows.values()} == {"ok"}
    assert "MemoryError" in worker.text() and "tried one by one" in worker.text()

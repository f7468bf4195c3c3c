"""The batch ledger (store.batches.JobBatches) on SQLite and PostgreSQL: what makes counts exact and repairs safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from moderator.store import BatchState, JobBatches, JobState, NewBatch, Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.close()
    else:
        from tests.store.conftest import _pg_schema, _pg_user

        with _pg_schema(_pg_user()) as url:
            s = Store(url)
            yield s
            s.close()


def refs(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"uri": f"/photos/img{i}.jpg", "size": 10} for i in range(start, start + n)]


def job_with_batches(store: Store, sizes: list[int]) -> tuple[str, list[NewBatch]]:
    job_id = store.create_job(["/photos"], [])
    batches = [NewBatch(f"{job_id}:{i}", job_id, "q", refs(n, 10 * i)) for i, n in enumerate(sizes)]
    JobBatches(store).add(batches)
    store.update_job(job_id, total=sum(sizes))
    return job_id, batches


def test_a_batch_is_counted_in_its_job_once(store: Store) -> None:
    job_id, (a, b) = job_with_batches(store, [4, 2])
    ledger = JobBatches(store)
    assert ledger.begin(a, 0).deliveries == 1
    assert ledger.finish(a.id, job_id, done=3, errors=1) is True
    assert ledger.finish(a.id, job_id, done=3, errors=1) is False  # a redelivered copy
    assert ledger.begin(a, 0).state is BatchState.DONE
    job = store.get_job(job_id)
    assert job is not None and (job.state, job.done, job.errors) == (JobState.RUNNING, 3, 1)
    ledger.finish(b.id, job_id, done=2)
    job = store.get_job(job_id)
    assert job is not None and (job.state, job.done, job.errors) == (JobState.DONE, 5, 1)


def test_deliveries_count_per_retry_and_a_clean_requeue_is_taken_back(store: Store) -> None:
    _, (a,) = job_with_batches(store, [3])
    ledger = JobBatches(store)
    assert [ledger.begin(a, 0).deliveries for _ in range(3)] == [1, 2, 3]
    ledger.release(a.id)
    assert ledger.begin(a, 0).deliveries == 3
    assert ledger.begin(a, 1).deliveries == 1  # a retry starts its own count


def test_a_message_sent_before_the_ledger_is_recorded_on_delivery(store: Store) -> None:
    job_id = store.create_job(["/photos"], [], total=2)
    old = NewBatch("legacy-task-id", job_id, "q", refs(2))
    ledger = JobBatches(store)
    first = ledger.begin(old, 0)
    assert (first.state, first.deliveries) == (BatchState.QUEUED, 1)
    assert ledger.finish(old.id, job_id, done=2)
    assert (store.get_job(job_id) or pytest.fail()).state is JobState.DONE


def test_policies_not_run_are_merged_over_batches_and_workers(store: Store) -> None:
    job_id, (a, b) = job_with_batches(store, [1, 1])
    ledger = JobBatches(store)
    ledger.finish(a.id, job_id, done=1, not_run={"nsfw": "no CLIP weights"})
    ledger.finish(b.id, job_id, done=1, not_run={"violence": "no CLIP weights", "nsfw": "no CLIP weights"})
    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.DONE
    assert job.policies_not_run == {"nsfw": "no CLIP weights", "violence": "no CLIP weights"}


def test_a_split_replaces_the_batch_and_a_second_split_resends_only_untaken_children(store: Store) -> None:
    job_id, (a,) = job_with_batches(store, [3])
    ledger = JobBatches(store)
    children = ledger.split(a.id, job_id, "q", a.items)
    assert [c.id for c in children] == [f"{a.id}.0", f"{a.id}.1", f"{a.id}.2"]
    assert all(len(c.items) == 1 for c in children)
    ledger.begin(children[0], 0)  # taken by a worker
    ledger.finish(children[1].id, job_id, done=1)
    assert [c.id for c in ledger.split(a.id, job_id, "q", a.items)] == [f"{a.id}.2"]
    states = ledger.states(job_id)
    assert states[a.id] is BatchState.SPLIT and states[f"{a.id}.1"] is BatchState.DONE
    ledger.finish(children[0].id, job_id, done=1)
    ledger.finish(children[2].id, job_id, errors=1)
    job = store.get_job(job_id)
    assert job is not None and (job.state, job.done, job.errors) == (JobState.DONE, 2, 1)


def test_a_batch_that_gave_up_fails_its_job_with_the_reason(store: Store) -> None:
    job_id, (a, _) = job_with_batches(store, [2, 2])
    JobBatches(store).fail(a.id, job_id, "batch gave up after 8 retries: OperationalError: down")
    job = store.get_job(job_id)
    assert job is not None and job.state is JobState.FAILED and "gave up" in (job.message or "")
    assert JobBatches(store).states(job_id)[a.id] is BatchState.FAILED


def test_stalled_batches_are_those_of_unfinished_jobs_not_taken_lately(store: Store) -> None:
    job_id, (a, b, c) = job_with_batches(store, [1, 1, 1])
    ledger = JobBatches(store)
    ledger.begin(b, 0)  # taken just now: may still be running
    ledger.finish(c.id, job_id, done=1)
    later = datetime.now(UTC) + timedelta(seconds=5)
    stalled = ledger.stalled(["q"], sent_before=later, started_before=later - timedelta(seconds=60))
    assert [s.id for s in stalled] == [a.id] and stalled[0].items == a.items and stalled[0].sends == 1
    assert ledger.stalled(["other-queue"], sent_before=later, started_before=later) == []
    assert {s.id for s in ledger.stalled(["q"], sent_before=later, started_before=later)} == {a.id, b.id}
    store.update_job(job_id, state=JobState.FAILED, message="x")
    assert ledger.stalled(["q"], sent_before=later, started_before=later) == []


def test_only_one_of_several_checkers_resends_a_batch(store: Store) -> None:
    _, (a,) = job_with_batches(store, [1])
    ledger = JobBatches(store)
    wins: list[bool] = []
    threads = [threading.Thread(target=lambda: wins.append(ledger.claim_resend(a.id, 1))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    assert ledger.claim_resend(a.id, 2) is True  # the next check, having seen the new count

"""Batch jobs over the store stream (issue 17): rescore and diff hold one chunk of items at a
time, commit a rescore chunk by chunk with its checkpoint, and a stopped rescore goes on
where it stopped; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moderator.engine import diff as diff_module
from moderator.engine import rescore as rescore_module
from moderator.engine.compile import CompiledPolicy
from moderator.engine.diff import diff_policies
from moderator.engine.rescore import rescore
from moderator.store import Store, bulk
from moderator.store.runs import RescoreRun
from tests.lifecycle import MODEL_ID, PETS, axis, compiled, context, seed, write
from tests.store.conftest import pg_session_url, pg_user, store  # noqa: F401  (both backends)

# 11 items over the three pets axes and mixes, one with no embedding of the model.
ITEMS = {f"item{i:02d}": axis(i % 3) if i % 4 else axis(i % 3, (i + 1) % 3) for i in range(10)}
EDITED = PETS.replace("action: review", "action: block").replace(
    "threshold: 0.5, action: tag", "threshold: 0.3, action: tag"
)


def seeded(store: Store) -> None:  # noqa: F811
    seed(store, ITEMS)
    seed(store, {"elsewhere": axis(1)}, model_id="other/model")


def state(store: Store) -> dict[str, tuple[Any, ...]]:  # noqa: F811
    """uri -> (decision, previous decision, and the stored result as written, less its time)."""
    query = (
        "SELECT items.uri, items.decision, results.policy_version, results.action, results.scores, "
        "results.fired, results.tags FROM items LEFT JOIN results ON results.item_id = items.id"
    )
    with store.session() as s:
        return {r[0]: tuple(str(v) for v in r[1:]) for r in s.connection().exec_driver_sql(query)}


def item_ids(store: Store) -> list[int]:  # noqa: F811
    with store.session() as s:
        return [r[0] for r in s.connection().exec_driver_sql("SELECT id FROM items ORDER BY id")]


def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CompiledPolicy, CompiledPolicy]:
    ctx, _ = context(tmp_path, monkeypatch)
    return compiled(write(tmp_path / "pets.yaml", PETS), ctx), compiled(write(tmp_path / "edited.yaml", EDITED), ctx)


REFRESH = bulk.refresh_decisions


def refresh_failing_at(monkeypatch: pytest.MonkeyPatch, n: int) -> list[dict[str, Any]]:
    """bulk.refresh_decisions raising once its n-th call has run (the chunk's transaction still
    open); the keyword arguments of each call. Undone by setting REFRESH back."""
    calls: list[dict[str, Any]] = []

    def failing(conn: Any, **kwargs: Any) -> int:
        calls.append(kwargs)
        changed = REFRESH(conn, **kwargs)
        if len(calls) == n:
            raise RuntimeError("killed")
        return changed

    monkeypatch.setattr(bulk, "refresh_decisions", failing)
    return calls


def two_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CompiledPolicy, CompiledPolicy]:
    ctx, _ = context(tmp_path, monkeypatch)
    pets = compiled(write(tmp_path / "pets.yaml", PETS), ctx)
    return pets, compiled(write(tmp_path / "strict.yaml", EDITED.replace("name: pets", "name: strict")), ctx)


def test_a_rescore_stopped_after_two_chunks_goes_on_and_ends_as_a_clean_one(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded(store)
    pets, edited = policies(tmp_path, monkeypatch)
    rescore(store, pets, MODEL_ID, chunk_size=3)
    before = state(store)

    # The third chunk fails after its results were written, before its transaction commits.
    refresh_failing_at(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="killed"):
        rescore(store, edited, MODEL_ID, chunk_size=3)
    monkeypatch.setattr(bulk, "refresh_decisions", REFRESH)

    ids = item_ids(store)
    stopped = state(store)
    versions = {uri: row[1] for uri, row in stopped.items()}
    uris = sorted(ITEMS)
    assert {versions[u] for u in uris[:6]} == {edited.loaded.version}  # two chunks committed
    assert {versions[u] for u in uris[6:]} == {pets.loaded.version}  # nothing of the third
    assert {u: stopped[u] for u in uris[6:]} == {u: before[u] for u in uris[6:]}
    with store.session() as s:
        run = s.get(RescoreRun, ("pets", edited.loaded.version, MODEL_ID))
        assert run is not None and (run.last_item_id, run.finished, run.items) == (ids[5], False, 6)

    scored: list[int] = []
    real_score = rescore_module.score_matrix

    def counted(policy: CompiledPolicy, matrix: bulk.EmbeddingMatrix) -> Any:
        scored.append(len(matrix))
        return real_score(policy, matrix)

    monkeypatch.setattr(rescore_module, "score_matrix", counted)
    resumed = rescore(store, edited, MODEL_ID, chunk_size=3)
    assert resumed.resumed_after == ids[5] and sum(scored) == 4  # only the items after the checkpoint
    resumed_state = state(store)

    again = rescore(store, edited, MODEL_ID, chunk_size=3)  # finished: a new run starts from the first item
    assert again.resumed_after == 0 and sum(scored) == 4 + 10
    assert state(store) == resumed_state
    # Totals of the whole run, as a clean run from the same start reports them.
    assert (resumed.items, resumed.missing) == (again.items, again.missing) == (10, 1)
    assert resumed.actions == again.actions
    moved = sum(before[u][0] != resumed_state[u][0] for u in uris)
    assert moved > 0 and resumed.decisions_changed == moved and again.decisions_changed == 0


def test_a_clean_rescore_in_chunks_stores_what_one_chunk_stores(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded(store)
    pets, edited = policies(tmp_path, monkeypatch)
    rescore(store, pets, MODEL_ID, chunk_size=100)
    one = rescore(store, edited, MODEL_ID, chunk_size=100)
    whole = state(store)
    rescore(store, pets, MODEL_ID, chunk_size=2)
    many = rescore(store, edited, MODEL_ID, chunk_size=2)
    assert state(store) == whole
    assert (many.items, many.missing, many.decisions_changed, many.actions) == (
        one.items,
        one.missing,
        one.decisions_changed,
        one.actions,
    )


def _no_whole_store_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Refuse the whole-store reads; record the rows of every chunk read."""

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a whole-store read")

    for name in ("load_embedding_matrix", "load_scored_items"):
        monkeypatch.setattr(bulk, name, refused)
    sizes: list[int] = []
    real = bulk.iter_item_chunks

    def recorded(*args: Any, **kwargs: Any) -> Iterator[bulk.ItemChunk]:
        for chunk in real(*args, **kwargs):
            sizes.append(len(chunk.ids) + chunk.missing)
            yield chunk

    for module in (rescore_module, diff_module):
        monkeypatch.setattr(module, "iter_item_chunks", recorded)
    return sizes


def test_rescore_and_diff_hold_one_chunk_of_items_at_a_time(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded(store)
    pets, edited = policies(tmp_path, monkeypatch)
    seen: list[int] = []
    real_score = pets.scorer.score

    def counted(batch: Any) -> Any:
        seen.append(len(batch.sha256))
        return real_score(batch)

    monkeypatch.setattr(pets.scorer, "score", counted)
    sizes = _no_whole_store_reads(monkeypatch)
    rescore(store, pets, MODEL_ID, chunk_size=4)
    assert sizes == [4, 4, 3] and max(seen) <= 4
    sizes.clear()
    diff_policies(store, pets, edited, MODEL_ID, chunk_size=4)
    assert sizes == [4, 4, 3]


def test_a_diff_in_chunks_says_what_one_chunk_says(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded(store)
    pets, edited = policies(tmp_path, monkeypatch)
    rescore(store, pets, MODEL_ID)
    one = diff_policies(store, pets, edited, MODEL_ID, chunk_size=1000, sample=4)
    assert one.decisions_changed > 0 and len(one.sample) == 4
    for size in (1, 3):
        assert diff_policies(store, pets, edited, MODEL_ID, chunk_size=size, sample=4).as_dict() == one.as_dict()
    assert np.all([c.fired_old >= 0 for c in one.classes])


CHILD = """
import sys, time
from pathlib import Path
from moderator.engine.rescore import rescore
from moderator.models.text_cache import TextEmbeddingCache
from moderator.scorers import ScorerContext, zero_shot
from moderator.store import Store, bulk
from tests.lifecycle import MODEL_ID, TINY, FakeClip, compiled

url, policy, cache = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
zero_shot.scorer.cache = TextEmbeddingCache(cache)
clip = FakeClip()
real, calls = bulk.refresh_decisions, []

def stalled(conn, **kwargs):
    calls.append(1)
    changed = real(conn, **kwargs)
    if len(calls) == 3:  # the third chunk's results are written, its transaction open: wait to be killed
        print("in chunk 3", flush=True)
        time.sleep(120)
    return changed

bulk.refresh_decisions = stalled
rescore(Store(url), compiled(policy, ScorerContext(settings=TINY, clip=lambda: clip)), MODEL_ID, chunk_size=3)
"""


def test_a_rescore_killed_inside_a_chunk_leaves_none_of_it_and_goes_on(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import signal
    import subprocess
    import sys

    seeded(store)
    pets, edited = policies(tmp_path, monkeypatch)
    rescore(store, pets, MODEL_ID, chunk_size=3)
    before = state(store)
    url = store.engine.url.render_as_string(hide_password=False)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(tmp_path / "edited.yaml"), str(tmp_path / "text-cache")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "in chunk 3"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    uris = sorted(ITEMS)
    killed = state(store)
    assert {killed[u][1] for u in uris[:6]} == {edited.loaded.version}
    assert {u: killed[u] for u in uris[6:]} == {u: before[u] for u in uris[6:]}  # nothing of chunk 3
    resumed = rescore(store, edited, MODEL_ID, chunk_size=3)
    assert resumed.resumed_after == item_ids(store)[5] and resumed.items == 10
    after = state(store)
    rescore(store, pets, MODEL_ID, chunk_size=3)
    clean = rescore(store, edited, MODEL_ID, chunk_size=3)
    assert state(store) == after and clean.resumed_after == 0
    assert (resumed.decisions_changed, resumed.actions) == (clean.decisions_changed, clean.actions)


def results_of(store: Store) -> dict[str, tuple[str, ...]]:  # noqa: F811
    """uri/policy -> the stored result less its time, and the item's decision."""
    query = (
        "SELECT items.uri, results.policy, items.decision, results.policy_version, results.action, "
        "results.scores, results.fired, results.tags FROM items JOIN results ON results.item_id = items.id"
    )
    with store.session() as s:
        return {f"{r[0]}/{r[1]}": tuple(str(v) for v in r[2:]) for r in s.connection().exec_driver_sql(query)}


def test_several_policies_in_one_pass_resume_each_from_its_own_checkpoint(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moderator.engine.rescore import rescore_many

    seeded(store)
    pets, strict = two_policies(tmp_path, monkeypatch)
    rescore(store, pets, MODEL_ID, chunk_size=3)
    rescore(store, strict, MODEL_ID, chunk_size=3)
    apart = results_of(store)
    store_reads = _no_whole_store_reads(monkeypatch)
    with store.session() as s:
        s.connection().exec_driver_sql("DELETE FROM results")
        s.connection().exec_driver_sql("UPDATE items SET decision = NULL")

    # A pass of pets alone stops in its third chunk; strict's last run finished.
    refresh_failing_at(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="killed"):
        rescore_many(store, [pets], MODEL_ID, chunk_size=3)
    monkeypatch.setattr(bulk, "refresh_decisions", REFRESH)
    assert store_reads[:3] == [3, 3, 3]
    store_reads.clear()
    ids = item_ids(store)
    one, two = rescore_many(store, [pets, strict], MODEL_ID, chunk_size=3)
    assert (one.resumed_after, two.resumed_after) == (ids[5], 0)  # pets joins the pass at its checkpoint
    assert store_reads == [3, 3, 3, 2]  # each chunk read once for both policies
    assert results_of(store) == apart
    assert (one.items, two.items, one.missing) == (10, 10, 1)


def test_a_pass_of_several_policies_commits_each_chunk_for_all_of_them_or_for_none(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One transaction per chunk: every policy's results, one refresh of decisions and queue, the checkpoints."""
    from sqlalchemy import select

    from moderator.engine.rescore import rescore_many

    seeded(store)
    pets, strict = two_policies(tmp_path, monkeypatch)
    calls = refresh_failing_at(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="killed"):
        rescore_many(store, [pets, strict], MODEL_ID, chunk_size=3)
    ids = item_ids(store)
    assert [c["id_range"] for c in calls] == [(ids[0], ids[2]), (ids[3], ids[5])]  # one refresh per chunk
    uris = sorted(ITEMS)
    assert sorted(results_of(store)) == sorted(f"{u}/{p}" for u in uris[:3] for p in ("pets", "strict"))
    with store.session() as s:
        runs = s.execute(select(RescoreRun.policy, RescoreRun.last_item_id, RescoreRun.items)).all()
    assert sorted(map(tuple, runs)) == [("pets", ids[2], 3), ("strict", ids[2], 3)]
    monkeypatch.setattr(bulk, "refresh_decisions", REFRESH)
    one, two = rescore_many(store, [pets, strict], MODEL_ID, chunk_size=3)
    assert (one.resumed_after, two.resumed_after, one.items, two.items) == (ids[2], ids[2], 10, 10)
    assert one.decisions_changed == two.decisions_changed  # the chunks' changes, shared by the pass


def test_a_rescore_chunk_refreshes_its_decisions_in_one_statement(
    tmp_path: Path,
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk is a span of ids: one UPDATE of decisions for it, not one per 500 ids bound by list
    (measured at 100k items: those lists were a third of the rescore's time)."""
    from sqlalchemy import event

    seed(store, {f"many{i:04d}": axis(i % 3) for i in range(1200)})
    pets, edited = policies(tmp_path, monkeypatch)
    rescore(store, pets, MODEL_ID, chunk_size=5000)
    updates: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE ITEMS"):
            updates.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        summary = rescore(store, edited, MODEL_ID, chunk_size=5000)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert summary.items == 1200
    assert summary.decisions_changed == 400  # the edit turned the dogs' reviews into blocks
    assert len(updates) == 1, updates
    blocked = {uri for uri, (decision, *_) in state(store).items() if decision == "block"}
    assert blocked == {f"many{i:04d}" for i in range(1200) if i % 3 == 1}

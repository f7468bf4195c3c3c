"""Several processes writing one store at once (issue 17): workers of one scan, redelivered batches.

Real processes on a real PostgreSQL (and a SQLite file): overlapping batches written in
different orders must neither deadlock nor leave a row twice, and every item ends with the
decision of its stored results and the decision events that say so.
"""

from __future__ import annotations

import multiprocessing as mp
import random
from typing import Any

import pytest
from sqlalchemy import func, select

from moderator.store import ItemRecord, Store
from moderator.store.outbox import ITEM_DECIDED
from moderator.store.tables import Item, OutboxEvent, Result
from moderator.types import Action, FiredClass, ItemStatus, PolicyResult

WRITERS = 4
SEVERITY = {a: a.severity for a in Action}


def _result(policy: str, action: Action, version: str = "v1") -> PolicyResult:
    fired = () if action is Action.ALLOW else (FiredClass("c", action, 0.9, 0.5, "evidence"),)
    return PolicyResult(policy, version, "clip", "ViT-B-32/test", {"c": 0.9}, fired, action)


def _record(i: int, writer: int | None = None) -> ItemRecord:
    """Item i; with `writer`, results that differ per writer (who wins must not matter for consistency)."""
    salt = i if writer is None else i + writer
    nsfw = (Action.ALLOW, Action.REVIEW, Action.BLOCK)[salt % 3]
    tags = Action.TAG if salt % 2 else Action.ALLOW
    results = [_result("nsfw", nsfw), _result("tags", tags)]
    decision = max((r.action for r in results), key=lambda a: a.severity)
    return ItemRecord(
        uri=f"s3://b/{i:05d}.jpg",
        sha256=f"{i:064x}",
        size=i,
        fingerprint=f"etag:{i}",
        status=ItemStatus.OK,
        meta={"key": f"{i:05d}.jpg"},
        decision=decision,
        results=results,
    )


def _write(url: str, batches: list[list[int]], writer: int | None, barrier: Any, errors: Any) -> None:
    try:
        store = Store(url)
        barrier.wait(60)
        for batch in batches:
            store.save_items([_record(i, writer) for i in batch])
        store.close()
    except Exception as e:  # reported to the test
        errors.put(f"writer {writer}: {type(e).__name__}: {e}")
        raise


def _run(url: str, plans: list[list[list[int]]], *, differ: bool = False) -> None:
    Store(url).close()  # migrated before the writers start, as a deployment does
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(len(plans)), ctx.Queue()
    procs = [
        ctx.Process(target=_write, args=(url, plan, w if differ else None, barrier, errors))
        for w, plan in enumerate(plans)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _check(url: str, n: int) -> dict[int, int]:
    """Every item once, two results each, its decision the most severe of them; events per item."""
    store = Store(url)
    try:
        with store.session() as s:
            items = s.execute(select(Item.id, Item.uri, Item.decision, Item.event_seq)).all()
            results = s.execute(select(Result.item_id, Result.action)).all()
            events = s.execute(
                select(OutboxEvent.item_id, OutboxEvent.seq, OutboxEvent.payload).where(
                    OutboxEvent.type == ITEM_DECIDED
                )
            ).all()
            assert s.scalar(select(func.count(func.distinct(Item.uri)))) == n
    finally:
        store.close()
    assert len(items) == n
    worst: dict[int, Action] = {}
    per_item: dict[int, int] = {}
    for item_id, action in results:
        per_item[item_id] = per_item.get(item_id, 0) + 1
        if item_id not in worst or SEVERITY[action] > SEVERITY[worst[item_id]]:
            worst[item_id] = action
    assert set(per_item.values()) == {2}
    latest: dict[int, tuple[int, dict[str, Any]]] = {}
    for item_id, seq, payload in events:
        if item_id not in latest or seq > latest[item_id][0]:
            latest[item_id] = (seq, payload)
    for item_id, _uri, decision, event_seq in items:
        assert decision == worst[item_id]
        # The last event of an item is the one of its current decision.
        seq, payload = latest[item_id]
        assert (seq, payload["decision"]) == (event_seq, decision.value)
    counts: dict[int, int] = {}
    for item_id, _, _ in events:
        counts[item_id] = counts.get(item_id, 0) + 1
    return counts


def _batches(ids: list[int], size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    shuffled = ids[:]
    rng.shuffle(shuffled)  # each writer meets the rows in another order
    return [shuffled[i : i + size] for i in range(0, len(shuffled), size)]


def test_four_writers_of_disjoint_batches_store_every_item_once(empty_db_url: str) -> None:
    n = 800
    plans = [_batches(list(range(w, n, WRITERS)), 50, w) for w in range(WRITERS)]
    _run(empty_db_url, plans)
    events = _check(empty_db_url, n)
    assert sorted(events.values()) == [1] * n  # one decision per item, one event each


def test_four_writers_of_the_same_items_in_other_orders_neither_deadlock_nor_duplicate(empty_db_url: str) -> None:
    # Every writer writes all the items, in its own order, in batches that overlap the others':
    # without one lock order two of them wait on each other (PostgreSQL aborts one: a deadlock).
    n = 400
    plans = [_batches(list(range(n)), 100, w) for w in range(WRITERS)]
    _run(empty_db_url, plans)
    events = _check(empty_db_url, n)
    assert sorted(events.values()) == [1] * n  # the same records again change no decision


def test_overlapping_writers_with_other_results_leave_consistent_decisions(empty_db_url: str) -> None:
    # Redelivered batches scored by other policy results: whoever wins last, each item's decision
    # is the most severe of its stored results and its last event says so.
    n = 300
    plans = [_batches(list(range(n)), 60, 10 + w) for w in range(WRITERS)]
    _run(empty_db_url, plans, differ=True)
    _check(empty_db_url, n)


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_one_batch_in_any_order_stores_the_same_rows(empty_db_url: str, order: str) -> None:
    records = [_record(i) for i in range(20)]
    store = Store(empty_db_url)
    try:
        store.save_items(records if order == "sorted" else records[::-1])
        with store.session() as s:
            rows = s.execute(select(Item.uri, Item.decision).order_by(Item.uri)).all()
    finally:
        store.close()
    assert [(u, d) for u, d in rows] == [(r.uri, r.decision) for r in records]

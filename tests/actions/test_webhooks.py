"""Decision events end to end: outbox writes with the decision, signed deliveries to a real
receiver on 127.0.0.1 (every signature verified with standardwebhooks), retries, replicas."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from moderator.actions.deliver import Deliverer, backoff_s
from moderator.actions.events import Event, event_from_row
from moderator.engine.rescore import rescore
from moderator.review import decisions
from moderator.settings import Settings
from moderator.store import ItemRecord, Store
from moderator.store import deliveries as ledger
from moderator.store.tables import DeliveryState, Item, Verdict
from moderator.types import Action, ItemStatus
from tests.actions.hooks import BLOCKING, ITEMS, decide_pets, delivering, hook_settings
from tests.actions.receiver import Receiver, wait_until
from tests.lifecycle import MODEL_ID, PETS, compiled, context, sha_of, write


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def events(store: Store) -> list[Event]:
    return [event_from_row(e.id, e.type, e.item_id, e.seq, e.payload, e.created_at) for e in ledger.list_events(store)]


def register(store: Store, receiver: Receiver, **filters: list[str]) -> ledger.EndpointInfo:
    ep = ledger.add_endpoint(store, receiver.url, **filters)
    receiver.secret = ep.secret
    return ep


# -- the outbox: first decisions and changes, nothing else -----------------------------------


def test_events_are_written_for_first_decisions_and_changes_only(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decide_pets(store, tmp_path, monkeypatch, PETS)  # cat tag, dog review
    got = events(store)
    first = [e for e in got if e.seq == 1]
    assert {e.uri for e in first} == set(ITEMS)
    assert all(e.type == "item.decided" and e.previous_decision is None for e in first)
    changed = {e.uri: e for e in got if e.seq == 2}
    assert set(changed) == {"cat1", "dog1"} and len(got) == 5
    dog = changed["dog1"]
    assert (dog.decision, dog.previous_decision, dog.pipeline_decision) == (Action.REVIEW, Action.ALLOW, Action.REVIEW)
    assert dog.sha256 == sha_of("dog1") and dog.fired == ["pets/dog"]
    assert dog.policies[0].fired[0].evidence == "axis1" and dog.policies[0].fired[0].score > 0.5
    assert dog.policy_versions["pets"] == dog.policies[0].version

    ctx, _ = context(tmp_path, monkeypatch)
    same = rescore(store, compiled(write(tmp_path / "pets.yaml", PETS), ctx), MODEL_ID)
    assert same.decisions_changed == 0 and len(events(store)) == 5  # an unchanged rescore emits nothing
    # The same scan saved again (the store's upsert, as scans and workers call it): nothing either.
    store.save_items([ItemRecord(u, sha_of(u), 1, None, ItemStatus.OK) for u in ITEMS])
    assert len(events(store)) == 5

    edited = rescore(store, compiled(write(tmp_path / "pets.yaml", BLOCKING), ctx), MODEL_ID)
    assert edited.decisions_changed == 1
    new = [e for e in events(store) if e.seq == 3]
    assert [(e.uri, e.decision, e.previous_decision) for e in new] == [("dog1", Action.BLOCK, Action.REVIEW)]


def test_a_rolled_back_change_leaves_no_event(store: Store) -> None:
    from moderator.store.results import refresh_decisions

    store.save_items([ItemRecord("a", sha_of("a"), 1, None, ItemStatus.OK)])
    before = len(events(store))
    with pytest.raises(RuntimeError), store.session() as s:
        s.execute(Item.__table__.update().values(decision=None))  # type: ignore[attr-defined]
        assert refresh_decisions(s.connection(), item_ids=[1]) == 1
        assert len(ledger.list_events(store)) == before  # not visible outside the transaction
        raise RuntimeError("abort")
    assert len(events(store)) == before


# -- delivery ---------------------------------------------------------------------------------


def test_three_failed_attempts_and_still_every_event_delivered_once_signed(
    url: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver(fail_first=3)
    try:
        register(store, receiver)
        decide_pets(store, tmp_path, monkeypatch)
        wanted = {e.id for e in events(store)}
        with delivering(Deliverer(store, hook_settings(url))):
            wait_until(lambda: set(receiver.ids()) == wanted, what="every event")
        assert receiver.bad == []
        assert receiver.requests == len(wanted) + 3  # three refused, then one each
        assert sorted(Counter(receiver.ids()).values()) == [1] * len(wanted)
        done = ledger.list_deliveries(store)
        assert {d.state for d in done} == {DeliveryState.DELIVERED}
        assert sum(d.attempts for d in done) == len(wanted) + 3
        # Per item, in seq order.
        for uri in ITEMS:
            seqs = [b["data"]["seq"] for b in receiver.accepted if b["data"]["uri"] == uri]
            assert seqs == sorted(seqs)
    finally:
        receiver.stop()


def test_a_receiver_down_for_a_while_gets_the_backlog(
    url: str, store: Store, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(store, receiver)
    receiver.stop()  # down: connections refused
    decide_pets(store, tmp_path, monkeypatch)
    wanted = {e.id for e in events(store)}
    with delivering(Deliverer(store, hook_settings(url))):
        wait_until(lambda: sum(d.attempts for d in ledger.list_deliveries(store)) >= 2 * len(wanted), what="retries")
        pending = ledger.list_deliveries(store)
        assert {d.state for d in pending} == {DeliveryState.PENDING}
        assert all(d.last_error and "Connect" in d.last_error for d in pending if d.attempts)
        receiver.start()  # back on the same port
        wait_until(lambda: set(receiver.ids()) == wanted, what="the backlog")
    assert receiver.bad == [] and len(receiver.ids()) == len(wanted)


def test_retries_end_after_retry_for_and_replay_sends_again(
    url: str, store: Store, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(store, receiver)
    receiver.stop()
    decide_pets(store, tmp_path, monkeypatch)
    deliverer = Deliverer(store, hook_settings(url, webhook_retry_for_s=0.3))
    with delivering(deliverer):
        wait_until(lambda: len(ledger.list_deliveries(store, state=DeliveryState.FAILED)) == 5, what="failed")
    failed = ledger.list_deliveries(store, state=DeliveryState.FAILED)
    assert len(failed) == 5 and all(d.attempts >= 1 for d in failed)
    receiver.start()
    deliverer.refresh()
    assert ledger.replay(store, failed[0].event_id, deliverer.targets_of) == 1
    deliverer.run_until_idle()
    assert receiver.ids() == [failed[0].event_id] and receiver.bad == []
    assert ledger.replay(store, "evt_nope", deliverer.targets_of) is None


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    import random

    rng = random.Random(1)
    for attempts, full in [(1, 5.0), (2, 10.0), (3, 20.0), (12, 3600.0)]:
        waits = [backoff_s(attempts, 5.0, 3600.0, rng) for _ in range(200)]
        assert all(full * 0.5 <= w < full for w in waits)
        assert max(waits) - min(waits) > full * 0.3  # jittered, not lockstep


def test_a_reviewer_overturning_a_block_sends_review_decided_then_item_decided(
    url: str, store: Store, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decide_pets(store, tmp_path, monkeypatch)
    register(store, receiver, events=["review.decided", "item.decided"], decisions=["block"])
    with Session(store.engine) as db:
        dog = db.query(Item).filter_by(uri="dog1").one()
        assert dog.decision is Action.BLOCK
        d = decisions.DecisionIn(verdict=Verdict.DISMISS, note="a toy dog")
        decisions.decide(db, dog, d, "rita", "api")
        db.commit()
    Deliverer(store, hook_settings(url)).run_until_idle()
    assert receiver.bad == []
    got = [b["data"] for b in receiver.accepted]
    # The decisions filter keeps what involves a block: the block itself, the review, the lift.
    assert [(e["type"], e["decision"], e["previous_decision"]) for e in got] == [
        ("item.decided", "block", "allow"),
        ("review.decided", "allow", "block"),
        ("item.decided", "allow", "block"),
    ]
    assert [e["seq"] for e in got] == [2, 3, 4]
    review = got[1]["review"]
    assert (review["reviewer"], review["action"], review["note"], review["via"]) == (
        "rita",
        "dismiss",
        "a toy dog",
        "api",
    )
    assert got[2]["review"] is None and got[2]["pipeline_decision"] == "block"


def test_endpoint_filters_choose_the_events(
    url: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reviews, tags = Receiver(), Receiver()
    try:
        ep_reviews = register(store, reviews, events=["review.decided"])
        ep_tags = register(store, tags, policies=["pets"], decisions=["tag"])
        tags.secret = ep_tags.secret
        reviews.secret = ep_reviews.secret
        decide_pets(store, tmp_path, monkeypatch)
        Deliverer(store, hook_settings(url)).run_until_idle()
        assert reviews.ids() == []
        assert [(b["data"]["uri"], b["data"]["decision"]) for b in tags.accepted] == [("cat1", "tag")]
    finally:
        reviews.stop()
        tags.stop()


def test_a_dead_endpoint_does_not_delay_a_live_one(
    url: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow, live = Receiver(hold_s=5.0), Receiver()
    try:
        register(store, slow)
        register(store, live)
        decide_pets(store, tmp_path, monkeypatch)
        wanted = {e.id for e in events(store)}
        settings = hook_settings(url, webhook_concurrency=1, webhook_timeout_s=10.0)
        with delivering(Deliverer(store, settings)):
            wait_until(lambda: set(live.ids()) == wanted, timeout=4.0, what="the live endpoint")
            assert len(slow.ids()) <= 1  # the slow one is still on its first
    finally:
        slow.stop()
        live.stop()


def test_two_replicas_never_deliver_one_event_at_the_same_time(
    url: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver(hold_s=0.05)
    try:
        register(store, receiver)
        decide_pets(store, tmp_path, monkeypatch)
        # More items: 40 first decisions, several events per item in flight at once.
        store.save_items([ItemRecord(f"extra{i}", sha_of(f"x{i}"), 1, None, ItemStatus.OK) for i in range(40)])
        wanted = {e.id for e in events(store)}
        settings = hook_settings(url, webhook_concurrency=8)
        a, b = Deliverer(store, settings, owner="replica-a"), Deliverer(store, settings, owner="replica-b")
        with delivering(a), delivering(b):
            wait_until(lambda: set(receiver.ids()) == wanted, what="every event")
        assert receiver.bad == [] and receiver.max_inflight == 1
        assert sorted(Counter(receiver.ids()).values()) == [1] * len(wanted)  # leases: none sent twice
        assert a.delivered > 0 and b.delivered > 0 and a.delivered + b.delivered == len(wanted)
    finally:
        receiver.stop()


def test_claims_of_two_owners_at_once_are_disjoint(url: str, store: Store) -> None:
    store.save_items([ItemRecord(f"i{i}", sha_of(f"i{i}"), 1, None, ItemStatus.OK) for i in range(60)])
    ledger.dispatch(store, lambda rows: {r.id: [("webhook", "1")] for r in rows})
    got: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def take(owner: str) -> None:
        start.wait()
        mine: list[int] = []
        for _ in range(10):
            mine += [c.delivery_id for c in ledger.claim(store, owner, "webhook", "1", limit=3, lease_s=60)]
        got[owner] = mine

    threads = [threading.Thread(target=take, args=(f"o{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == len(set(claimed)) == 60


def test_a_scan_emits_one_first_decision_per_scored_item_and_a_rescan_none(
    tiny_settings: Settings, photo_dir: Path
) -> None:
    from moderator.pipeline import Pipeline

    (photo_dir / "broken.jpg").write_bytes(b"not an image")  # an error: no decision, no event
    store = Store(tiny_settings.database_url)
    try:
        Pipeline(tiny_settings, store).scan_targets([str(photo_dir)])
        stored = {r.uri: r.decision for r in store.iter_export()}
        got = events(store)
        assert sorted(e.uri for e in got) == sorted(u for u in stored if not u.endswith("broken.jpg"))
        assert all(e.seq == 1 and e.previous_decision is None and e.decision == stored[e.uri] for e in got)
        assert all({p.policy for p in e.policies} == {"nsfw", "tags"} for e in got)
        assert Pipeline(tiny_settings, store).scan_targets([str(photo_dir)]).scanned == 0  # all unchanged
        # Scored again (same bytes, same weights): the same decisions, so no event.
        Pipeline(tiny_settings, store).scan_targets([str(photo_dir)], force=True)
        assert len(events(store)) == len(got)
    finally:
        store.close()

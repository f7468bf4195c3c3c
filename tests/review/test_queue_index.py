"""The indexed review queue (store/queue_index.py read by review/queries.py), on SQLite and PostgreSQL:
one row per content with its places, keyset pages in order, capped counts, the filters read
from their own index rows, decisions per content that later items with the same bytes inherit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderator.review import decisions, queries
from moderator.review.decisions import DecisionIn
from moderator.store import ItemRecord, Store
from moderator.store.outbox import REVIEW_DECIDED
from moderator.store.queue_index import ContentDecision, QueueContent, QueueFacet, QueuePlace
from moderator.store.results import encode_result, refresh_decisions, upsert_results
from moderator.store.tables import Item, OutboxEvent, Review, ReviewLabel, Verdict
from moderator.types import Action, ItemStatus

from .helpers import make_result


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'q.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    yield s
    s.close()


def _record(uri: str, sha: str, score: float, action: Action = Action.REVIEW, **more: object) -> ItemRecord:
    policy = str(more.get("policy", "nsfw"))
    name = str(more.get("cls", "suggestive"))
    results = [make_result(policy, {name: score}, [(name, action, score)] if action is not Action.ALLOW else [])]
    if more.get("tag"):
        results.append(make_result("tags", {str(more["tag"]): 0.9}, [(str(more["tag"]), Action.TAG, 0.9)]))
    return ItemRecord(uri=uri, sha256=sha, size=1, fingerprint=None, status=ItemStatus.OK, results=results)


def _sha(n: int) -> str:
    return f"{n:064x}"


def _queue(store: Store, **filters: object) -> queries.QueuePage:
    with Session(store.engine) as db:
        return queries.queue(db, queries.QueueFilters.model_validate(filters))


def _ids(store: Store, *uris: str) -> list[int]:
    with Session(store.engine) as db:
        found = {u: i for u, i in db.execute(select(Item.uri, Item.id).where(Item.uri.in_(uris)))}
    return [found[u] for u in uris]


def test_one_row_per_content_with_the_places_it_appears(store: Store) -> None:
    places = ["/data/a.jpg", "/data/photos.zip#inner/a.jpg", "s3://bucket/users/a.jpg"]
    store.save_items([_record(u, _sha(1), 0.7) for u in places] + [_record("/data/b.jpg", _sha(2), 0.5)])
    store.save_items([_record("upload:" + _sha(1), _sha(1), 0.7)])  # a later batch: a fourth place
    page = _queue(store)
    assert [(r.sha256, r.places) for r in page.rows] == [(_sha(1), 4), (_sha(2), 1)]
    first = page.rows[0]
    ids = _ids(store, *places)
    assert first.id == min(ids) and first.uri == places[0]
    assert [(p.uri, p.kind) for p in first.place_list] == [
        (places[0], "file"),
        (places[1], "archive"),
        (places[2], "s3"),
        ("upload:" + _sha(1), "upload"),
    ]
    assert page.total == 2 and not page.total_capped


def test_a_decision_applies_to_every_place_and_to_later_items_with_those_bytes(store: Store) -> None:
    store.save_items([_record(u, _sha(7), 0.8) for u in ("/x/1.jpg", "/x/2.jpg", "s3://b/3.jpg")])
    store.save_items([_record("/x/other.jpg", _sha(8), 0.4)])
    one, two, three = _ids(store, "/x/1.jpg", "/x/2.jpg", "s3://b/3.jpg")
    with Session(store.engine) as db:
        item = db.get(Item, two)
        assert item is not None
        review_id = decisions.decide(db, item, DecisionIn(verdict=Verdict.CONFIRM), "rita", "web").id
        db.commit()
    assert [r.sha256 for r in _queue(store).rows] == [_sha(8)]  # the content left the queue, all places at once

    store.save_items([_record("upload:late", _sha(7), 0.8)])  # the same bytes arrive later
    (late,) = _ids(store, "upload:late")
    assert [r.sha256 for r in _queue(store).rows] == [_sha(8)]
    with Session(store.engine) as db:
        rows = db.execute(
            select(Item.id, Review.reviewer, Review.via, Review.new_decision, Review.note)
            .join(Item, Item.uri == Review.item_uri)
            .order_by(Review.id)
        ).all()
        decided = db.get(ContentDecision, _sha(7))
        labels = db.scalars(select(ReviewLabel.review_id)).all()
        late_events = db.scalars(select(OutboxEvent.type).where(OutboxEvent.item_id == late)).all()
    assert rows[0] == (two, "rita", "web", "block", "")
    assert sorted(rows[1:]) == sorted(
        (i, "rita", "content", "block", f"same content as item {two}") for i in (one, three, late)
    )
    assert decided is not None and (decided.review_id, decided.item_id, decided.decision) == (review_id, two, "block")
    assert set(labels) == {review_id}  # training labels once per content, not once per place
    assert REVIEW_DECIDED in late_events  # the late place's decision is an event like any other


def test_decide_many_on_places_of_one_content_writes_one_review_each(store: Store) -> None:
    store.save_items([_record(u, _sha(3), 0.6) for u in ("/m/1.jpg", "/m/2.jpg")])
    with Session(store.engine) as db:
        items = list(db.scalars(select(Item).order_by(Item.id)))
        reviews = decisions.decide_many(db, items, DecisionIn(verdict=Verdict.DISMISS), "adam", "api")
        db.commit()
        assert [r.item_uri for r in reviews] == ["/m/1.jpg", "/m/2.jpg"]
        assert len(db.scalars(select(Review.id)).all()) == 2


def _fill(store: Store, n: int) -> None:
    # Ties on purpose (score repeats every 7): the item id breaks them.
    records = [
        _record(
            f"/f/{i:03d}.jpg" if i % 3 else f"s3://bucket/{i:03d}.jpg",
            _sha(100 + i),
            round(0.3 + (i % 7) / 10, 2),
            Action.BLOCK if i % 4 == 0 else Action.REVIEW,
            policy="violence" if i % 5 == 0 else "nsfw",
            cls="gore" if i % 5 == 0 else "suggestive",
            tag="outdoor" if i % 2 else None,
        )
        for i in range(n)
    ]
    store.save_items(records)


def _expected(store: Store, f: queries.QueueFilters) -> list[int]:
    """The queue order, computed in Python from what was stored."""
    with Session(store.engine) as db:
        rows = db.execute(select(QueueContent)).scalars().all()
        facets = {(x.facet, x.sha256) for x in db.scalars(select(QueueFacet))}
        places = {(x.sha256, x.uri) for x in db.scalars(select(QueuePlace))}
    keep = []
    for r in rows:
        wanted = queries._facets(f)
        if any((w, r.sha256) not in facets for w in wanted):
            continue
        if f.source and not any(s == r.sha256 and u.startswith(f.source) for s, u in places):
            continue
        if f.decision and r.decision != f.decision.value:
            continue
        keep.append(r)
    keep.sort(key=lambda r: (r.severity, r.top_score, r.item_id), reverse=True)
    return [r.item_id for r in keep]


def _walk(store: Store, **filters: object) -> list[int]:
    seen: list[int] = []
    after = None
    for _ in range(100):
        page = _queue(store, per_page=4, after=after, **filters)
        seen += [r.id for r in page.rows]
        after = page.next_cursor
        if after is None:
            return seen
    raise AssertionError("the pages never end")


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"decision": "block"},
        {"policy": "violence"},
        {"class": "suggestive"},
        {"policy": "nsfw", "class": "suggestive", "tag": "outdoor"},
        {"tag": "outdoor"},
        {"source": "s3://bucket/"},
    ],
)
def test_keyset_pages_walk_the_whole_queue_in_order(store: Store, filters: dict[str, object]) -> None:
    _fill(store, 41)
    expected = _expected(store, queries.QueueFilters.model_validate(filters))
    assert expected, "the filter matches something"
    assert _walk(store, **filters) == expected
    # `page` without a cursor: the same order by offset.
    second = _queue(store, per_page=4, page=2, **filters)
    assert [r.id for r in second.rows] == expected[4:8]


def test_score_filters_are_index_ranges_per_severity(store: Store) -> None:
    _fill(store, 41)
    with Session(store.engine) as db:
        rows = db.scalars(select(QueueContent)).all()
    inside = sorted(
        (r for r in rows if 0.45 <= r.top_score <= 0.75),
        key=lambda r: (r.severity, r.top_score, r.item_id),
        reverse=True,
    )
    assert _walk(store, min_score=0.45, max_score=0.75) == [r.item_id for r in inside]


def test_source_filter_reads_the_places_index_or_probes_rows_with_the_same_answer(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(store, 30)
    wide = _walk(store, source="/f/")
    monkeypatch.setattr(queries, "SOURCE_DRIVE", 3)  # now "/f/" is a common prefix: probed per row
    assert _walk(store, source="/f/") == wide and len(wide) > 3
    assert _queue(store, source="/nowhere/").rows == []


def test_counts_are_exact_up_to_the_cap(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(store, 12)
    assert (_queue(store).total, _queue(store).total_capped) == (12, False)
    monkeypatch.setattr(queries, "COUNT_CAP", 5)
    page = _queue(store)
    assert (page.total, page.total_capped) == (5, True)
    with Session(store.engine) as db:
        assert queries.queue_size(db) == 12  # the metric is exact


def test_new_bytes_at_a_place_move_it_to_their_content(store: Store) -> None:
    store.save_items([_record(u, _sha(5), 0.6) for u in ("/p/1.jpg", "/p/2.jpg")])
    store.save_items([_record("/p/2.jpg", _sha(6), 0.9, Action.BLOCK)])
    rows = {r.sha256: r for r in _queue(store).rows}
    assert (rows[_sha(5)].places, rows[_sha(6)].places) == (1, 1)
    assert rows[_sha(6)].decision == "block" and rows[_sha(6)].top_score == pytest.approx(0.9)
    store.save_items([_record("/p/1.jpg", _sha(5), 0.1, Action.ALLOW)])  # no longer flagged
    assert [r.sha256 for r in _queue(store).rows] == [_sha(6)]


def test_a_policy_wide_refresh_rebuilds_the_queue(store: Store) -> None:
    _fill(store, 10)
    ids = _ids(store, "/f/001.jpg", "/f/002.jpg")
    unflagged = make_result("nsfw", {"suggestive": 0.01}, [])
    with store.engine.begin() as conn:  # what a rescore of one policy writes
        rows = [(i, "nsfw", "v2", "clip", "test-tiny", *encode_result(unflagged)) for i in ids]
        upsert_results(conn, rows)
        refresh_decisions(conn, policy="nsfw")
    left = set(_walk(store))
    assert not left & set(ids) and len(left) == 8


def test_sync_rewrites_only_contents_of_the_items_given(store: Store) -> None:
    _fill(store, 6)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE queue_contents SET top_score = 0.99")  # made stale on purpose
        (one,) = _ids(store, "/f/001.jpg")
        refresh_decisions(conn, item_ids=[one])
    with Session(store.engine) as db:
        scores = {i: s for i, s in db.execute(select(QueueContent.item_id, QueueContent.top_score))}
    assert scores.pop(one) == pytest.approx(0.4)
    assert set(scores.values()) == {0.99}


def test_a_page_by_cursor_reads_by_key_without_offset(store: Store) -> None:
    from sqlalchemy import event

    _fill(store, 20)
    statements: list[tuple[str, object]] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append((a[2], a[3])))
    cursor = _queue(store, per_page=5).next_cursor
    statements.clear()
    page = _queue(store, per_page=5, after=cursor, tag="outdoor")
    keyed = [(s, p) for s, p in statements if "(f0.top_score, f0.item_id) <" in s and "ORDER BY" in s]
    assert page.rows and keyed, statements  # the facet's index from the key on, not a sort of items
    for sql, params in keyed:  # SQLite's compiler always writes "LIMIT ? OFFSET ?": its offset is 0
        assert "OFFSET" not in sql or (isinstance(params, tuple) and params[-1] == 0), (sql, params)
    assert not [s for s, _ in statements if "json_each" in s or "jsonb_array_elements" in s]


def test_a_decision_removed_elsewhere_puts_the_content_back(store: Store) -> None:
    from sqlalchemy import delete

    store.save_items([_record("/u/1.jpg", _sha(9), 0.6)])
    with Session(store.engine) as db:
        item = db.scalars(select(Item)).one()
        decisions.decide(db, item, DecisionIn(verdict=Verdict.DISMISS), "rita", "web")
        db.commit()
    assert _queue(store).rows == []
    with Session(store.engine) as db:  # what an undo does with the content decision
        db.execute(delete(ContentDecision).where(ContentDecision.sha256 == _sha(9)))
        from moderator.store.queue_index import refresh_contents

        refresh_contents(db.connection(), [_sha(9)])
        db.commit()
    assert [r.sha256 for r in _queue(store).rows] == [_sha(9)]

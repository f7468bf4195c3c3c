"""Alembic migrations: build the schema the tables describe, once, on both backends."""

from __future__ import annotations

import json
import threading

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from moderator.store import ItemRecord, Store
from moderator.store.engine import alembic_config, current_revisions, head_revisions, load_table_modules
from moderator.store.tables import Base
from moderator.types import ItemStatus


def test_the_revision_chain_is_linear_and_starts_at_0001() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "several heads: make the new revision's down_revision the old head"
    chain = [rev.revision for rev in script.walk_revisions()]
    assert chain[-1] == "0001"


def test_upgrade_builds_exactly_the_schema_of_the_tables(empty_db_url: str) -> None:
    load_table_modules()
    store = Store(empty_db_url)
    try:
        with store.engine.connect() as conn:
            assert current_revisions(conn) == head_revisions()
            assert {"items", "results", "embeddings", "jobs"} <= set(inspect(conn).get_table_names())
            # No difference between tables.py and what the migrations built.
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []
    finally:
        store.close()


def test_a_second_upgrade_is_a_no_op(empty_db_url: str) -> None:
    first = Store(empty_db_url)
    first.save_items([ItemRecord("/a.jpg", "0" * 64, 1, None, ItemStatus.OK)])
    first.close()

    again = Store(empty_db_url)
    try:
        with again.engine.connect() as conn:
            command.upgrade(alembic_config(connection=conn), "head")
            assert current_revisions(conn) == head_revisions()
        assert again.counts()["items"] == 1
    finally:
        again.close()


def test_downgrade_to_base_and_up_again(empty_db_url: str) -> None:
    store = Store(empty_db_url)
    try:
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(connection=conn), "base")
        with store.engine.connect() as conn:
            assert current_revisions(conn) == set()
            assert "items" not in inspect(conn).get_table_names()
    finally:
        store.close()
    Store(empty_db_url).close()


def test_stores_opened_at_once_on_an_empty_database_all_work(empty_db_url: str) -> None:
    # Several workers starting together: the migration lock lets one build the schema.
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(empty_db_url).close()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = create_engine(empty_db_url)
    with engine.connect() as conn:
        assert current_revisions(conn) == head_revisions()
    engine.dispose()


def test_0009_backfills_the_queue_and_content_decisions_from_a_0007_store(empty_db_url: str) -> None:
    """A store written by the release before the indexed queue: its flagged items are queued once
    per content, and a content a reviewer decided stays out of the queue."""
    from datetime import UTC, datetime

    from sqlalchemy import bindparam, text

    from moderator.store.engine import create_store_engine, normalise_url
    from moderator.store.tables import UTCDateTime

    engine = create_store_engine(normalise_url(empty_db_url), create=True)  # makes the SQLite folder
    pg = engine.dialect.name == "postgresql"
    js = "CAST(:{} AS JSONB)" if pg else ":{}"
    now = bindparam("now", type_=UTCDateTime())
    item = text(
        "INSERT INTO items (id, uri, sha256, status, meta, decision, created_at, updated_at, event_seq) "
        "VALUES (:id, :uri, :sha, 'ok', '{}', :decision, :now, :now, 0)"
    ).bindparams(now)
    result = text(
        "INSERT INTO results (item_id, policy, policy_version, scorer, model_id, action, scores, fired, tags, "
        f"created_at) VALUES (:item, 'nsfw', 'v1', 'clip', 'm', :action, {js.format('scores')}, "
        f"{js.format('fired')}, {js.format('tags')}, :now)"
    ).bindparams(now)
    review = text(
        "INSERT INTO reviews (item_uri, item_sha256, reviewer, via, verdict, old_decision, new_decision, labels, "
        f"note, created_at) VALUES (:uri, :sha, 'rita', 'web', 'dismiss', 'review', 'allow', {js.format('labels')}, "
        "'', :now)"
    ).bindparams(now)
    at = datetime(2026, 1, 2, tzinfo=UTC)
    sha = {k: k * 64 for k in "abcd"}
    items = [(1, "/a.jpg", "a", "review", 0.6), (2, "/b.jpg", "a", "review", 0.55), (3, "/c.jpg", "b", "block", 0.9)]
    items += [(4, "/d.jpg", "c", "review", 0.5), (5, "/e.jpg", "d", "allow", 0.1)]
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(connection=conn), "0007")
            for iid, uri, key, decision, score in items:
                conn.execute(item, {"id": iid, "uri": uri, "sha": sha[key], "decision": decision, "now": at})
                fired = [] if decision == "allow" else [{"name": "x", "action": decision, "score": score}]
                conn.execute(
                    result,
                    {
                        "item": iid,
                        "action": decision,
                        "scores": json.dumps({"x": score}),
                        "fired": json.dumps(fired),
                        "tags": json.dumps(["outdoor"] if iid == 2 else []),
                        "now": at,
                    },
                )
            conn.execute(review, {"uri": "/d.jpg", "sha": sha["c"], "labels": "[]", "now": at})
            command.upgrade(alembic_config(connection=conn), "0009")
            queued = conn.execute(
                text("SELECT sha256, decision, top_score, item_id, items FROM queue_contents ORDER BY sha256")
            ).all()
            facets = conn.execute(text("SELECT facet, sha256 FROM queue_facets ORDER BY facet, sha256")).all()
            places = conn.execute(text("SELECT item_id FROM queue_places ORDER BY item_id")).scalars().all()
            decided = conn.execute(text("SELECT sha256, decision, item_id FROM content_decisions")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in queued] == [(sha["a"], "review", 0.6, 1, 2), (sha["b"], "block", 0.9, 3, 1)]
    assert ("t:outdoor", sha["a"]) in facets and ("p:nsfw", sha["b"]) in facets and ("c:x", sha["a"]) in facets
    assert places == [1, 2, 3]
    assert [tuple(r) for r in decided] == [(sha["c"], "allow", 4)]

    store = Store(empty_db_url)  # and on to head: the queue reads what was backfilled
    try:
        from sqlalchemy.orm import Session

        from moderator.review import queries

        with Session(store.engine) as db:
            page = queries.queue(db, queries.QueueFilters())
        assert [(r.id, r.places) for r in page.rows] == [(3, 1), (1, 2)]
    finally:
        store.close()

"""Alembic migrations: build the schema the tables describe, once, on both backends."""

from __future__ import annotations

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

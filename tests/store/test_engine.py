"""Engine set-up: SQLite pragmas on every connection, PostgreSQL URLs on psycopg 3."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from moderator.store import Store
from moderator.store.engine import SQLITE_BUSY_TIMEOUT_MS, normalise_url


def test_sqlite_store_creates_its_folder_and_sets_its_pragmas(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'not' / 'yet' / 'store.db'}")
    try:
        assert (tmp_path / "not" / "yet" / "store.db").is_file()
        with store.session() as s:
            assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert s.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS == 30_000
            assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        store.close()


def test_pragmas_hold_on_connections_opened_later(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    seen: list[object] = []

    def check() -> None:
        with store.engine.connect() as conn:
            seen.append(conn.execute(text("PRAGMA foreign_keys")).scalar())

    thread = threading.Thread(target=check)
    thread.start()
    thread.join()
    store.close()
    assert seen == [1]


def test_in_memory_sqlite_keeps_one_database() -> None:
    store = Store("sqlite://")
    try:
        store.create_job(["/x"], ["nsfw"])
        assert store.counts()["jobs"] == 1
    finally:
        store.close()


def test_postgres_urls_use_psycopg3() -> None:
    for url in ("postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"):
        assert normalise_url(url).drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:///x.db").drivername == "sqlite"

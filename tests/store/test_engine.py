"""Engine set-up: SQLite pragmas on every connection, PostgreSQL URLs on psycopg 3, stores that must exist."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from moderator.store import Store, StoreNotFound
from moderator.store.engine import SQLITE_BUSY_TIMEOUT_MS, location, normalise_url


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


def test_a_store_that_must_exist_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "store.db"
    with pytest.raises(StoreNotFound) as found:
        Store(f"sqlite:///{missing}", create=False)
    message = str(found.value)
    assert str(missing) in message and "--database-url" in message and "\n" not in message
    assert not missing.parent.exists()  # neither the file nor its folder was made


def test_a_relative_sqlite_path_that_exists_absolute_gets_the_four_slash_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "x.db"
    Store(f"sqlite:///{real}").close()
    monkeypatch.chdir(tmp_path)
    typo = f"sqlite:///{str(real).lstrip('/')}"  # three slashes: a path relative to the working folder
    with pytest.raises(StoreNotFound, match=f"did you mean sqlite:///{real}"):
        Store(typo, create=False)
    assert not (tmp_path / str(real).lstrip("/")).exists()


def test_an_existing_store_opens_without_create_and_says_where_it_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).close()
    store = Store(url, create=False)
    try:
        assert store.location == str(tmp_path / "store.db")
        assert store.counts()["items"] == 0
    finally:
        store.close()


def test_a_database_without_the_store_tables_is_not_a_store(empty_db_url: str) -> None:
    if empty_db_url.startswith("sqlite"):
        path = Path(empty_db_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True)
        sqlite3.connect(path).execute("CREATE TABLE other (x INTEGER)").connection.commit()
    with pytest.raises(StoreNotFound, match="no store in"):
        Store(empty_db_url, create=False)
    Store(empty_db_url).close()  # a scan creates it
    Store(empty_db_url, create=False).close()


def test_location_hides_the_password() -> None:
    assert (
        location("postgresql://moderator:secret@db.example/prod")
        == "postgresql+psycopg://moderator:***@db.example/prod"
    )
    assert location("sqlite:///rel/store.db") == str(Path("rel/store.db").absolute())

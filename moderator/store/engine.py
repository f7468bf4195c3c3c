"""Engines: SQLite tuned for a single-machine scan, PostgreSQL by URL."""

from __future__ import annotations

import json
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Source metadata may hold datetimes and the like: store their text, never fail a batch on it.
_json_serializer = partial(json.dumps, default=str, ensure_ascii=False)


def normalise_url(url: str | URL) -> URL:
    """`postgres://` and `postgresql://` mean psycopg 3, the driver this package installs."""
    u = make_url(url)
    if u.drivername in ("postgres", "postgresql"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def _is_memory(u: URL) -> bool:
    return not u.database or u.database == ":memory:" or u.query.get("mode") == "memory"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL itself may have to wait for a lock.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """WAL is persistent, so only a new file needs the switch; it can fail at once with
    "database is locked" (SQLite does not wait on its busy handler there) when several
    processes open a new database together: retried with backoff, within the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def create_store_engine(url: str | URL) -> Engine:
    u = normalise_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, json_serializer=_json_serializer)
    kwargs: dict[str, Any] = {}
    if _is_memory(u):
        # One connection, or every checkout would see its own empty database.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    elif u.database and not u.database.startswith("file:"):
        path = Path(u.database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        u = u.set(database=str(path))
    engine = create_engine(u, json_serializer=_json_serializer, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine

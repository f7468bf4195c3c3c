"""Store fixtures: every store test runs on a SQLite file and on a real PostgreSQL.

PostgreSQL: 127.0.0.1:5432, database `test`, user postgres (or root), trust auth.
Each test session works in its own schema (via search_path) and drops it at the end.
Unreachable PostgreSQL skips those tests, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import URL

from moderator.store import Store
from moderator.store.tables import Base

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
PG_USERS = ("postgres", "root")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _pg_user() -> str:
    errors = []
    for user in PG_USERS:
        try:
            with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=user, connect_timeout=3):
                return user
        except psycopg.Error as e:
            errors.append(f"{user}: {str(e).strip().splitlines()[0]}")
    reason = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}/{PG_DB} ({'; '.join(errors)})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_user() -> str:
    return _pg_user()


def _schema_url(user: str, schema: str) -> URL:
    return URL.create(
        "postgresql+psycopg",
        username=user,
        host=PG_HOST,
        port=PG_PORT,
        database=PG_DB,
        query={"options": f"-csearch_path={schema}"},
    )


def _admin(user: str, sql: str) -> None:
    with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=user, autocommit=True) as conn:
        conn.execute(sql)


@contextmanager
def _pg_schema(user: str) -> Iterator[str]:
    schema = f"moderator_test_{uuid.uuid4().hex[:12]}"
    _admin(user, f'CREATE SCHEMA "{schema}"')
    try:
        yield _schema_url(user, schema).render_as_string(hide_password=False)
    finally:
        _admin(user, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def fresh_pg_url(pg_user: str) -> Iterator[str]:
    """An empty schema of its own: for tests that need a database before any migration."""
    with _pg_schema(pg_user) as url:
        yield url


@pytest.fixture(scope="session")
def pg_session_url(pg_user: str) -> Iterator[str]:
    """One schema for the whole session; `store` empties its tables after each test."""
    with _pg_schema(pg_user) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with no tables yet, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'store.db'}"
    url: str = request.getfixturevalue("fresh_pg_url")
    return url


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty store on each backend."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.close()
        return
    s = Store(request.getfixturevalue("pg_session_url"))
    try:
        yield s
    finally:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with s.engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        s.close()

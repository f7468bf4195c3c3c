"""Fixtures of the action tests: a store on SQLite and, where it runs, PostgreSQL (own schema)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moderator.store import Store

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    from tests.store.conftest import _pg_schema, _pg_user

    with _pg_schema(_pg_user()) as pg:
        yield pg


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = Store(url)
    yield s
    s.close()

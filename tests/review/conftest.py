"""Review fixtures: a SQLite store seeded through the store API, real PNGs, three users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from moderator.review import users
from moderator.review.app import create_app
from moderator.settings import Settings
from moderator.store import Store
from moderator.store.tables import Role

from .helpers import PASSWORDS, Seeded, seed


def seed_store(url: str, folder: Path, **settings: Any) -> Seeded:
    """Five items and three users (rita, adam the admin, dora disabled) in the store at `url`."""
    values = {"database_url": url, "login_max_failures": 3, "metrics_token": "metrics-secret", **settings}
    store = Store(url)
    uris = seed(store, folder)
    with Session(store.engine) as db:
        users.add_user(db, "rita", Role.REVIEWER, PASSWORDS["rita"])
        users.add_user(db, "adam", Role.ADMIN, PASSWORDS["adam"])
        users.add_user(db, "dora", Role.REVIEWER, PASSWORDS["dora"])
        users.set_disabled(db, "dora", True)
        db.commit()
    return Seeded(store, Settings.model_validate(values), folder, uris)


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed_store(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "images")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL schema of the test's own on 127.0.0.1:5432/test, dropped afterwards."""
    from tests.store.conftest import _pg_schema, _pg_user

    with _pg_schema(_pg_user()) as url:
        yield url


@pytest.fixture
def app(seeded: Seeded) -> FastAPI:
    return create_app(seeded.settings, seeded.store)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, follow_redirects=False)

"""Review fixtures: a SQLite store seeded through the store API, real PNGs, three users."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from moderator.review import users
from moderator.review.app import create_app
from moderator.settings import Settings
from moderator.store import Store
from moderator.store.review_tables import Role

from .helpers import PASSWORDS, Seeded, seed


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    settings = Settings.model_validate(
        {"database_url": url, "login_max_failures": 3, "metrics_token": "metrics-secret"}
    )
    store = Store(url)
    uris = seed(store, tmp_path / "images")
    with Session(store.engine) as db:
        users.add_user(db, "rita", Role.REVIEWER, PASSWORDS["rita"])
        users.add_user(db, "adam", Role.ADMIN, PASSWORDS["adam"])
        users.add_user(db, "dora", Role.REVIEWER, PASSWORDS["dora"])
        users.set_disabled(db, "dora", True)
        db.commit()
    return Seeded(store, settings, tmp_path / "images", uris)


@pytest.fixture
def app(seeded: Seeded) -> FastAPI:
    return create_app(seeded.settings, seeded.store)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, follow_redirects=False)

"""The failed-login limit under concurrent tries, on a real uvicorn, on SQLite and PostgreSQL;
and X-Forwarded-For believed only from the proxies the operator configures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from moderator.review.app import create_app, proxy_options

from .conftest import seed_store
from .helpers import PASSWORDS, Seeded, live_server

LIMIT = 5
TRIES = 80


def _login_form(base: str) -> str:
    """The login CSRF token (double-submit: the same value as cookie and form field)."""
    with httpx.Client(base_url=base) as c:
        c.get("/login").raise_for_status()
        return c.cookies["moderator_login_csrf"]


def _try(base: str, csrf: str, password: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(base_url=base, cookies={"moderator_login_csrf": csrf}, timeout=60) as c:
        form = {"username": "rita", "password": password, "csrf_token": csrf}
        return c.post("/login", data=form, headers=headers).status_code


def _limit_holds_under_concurrency(seeded: Seeded) -> None:
    app = create_app(seeded.settings, seeded.store)
    with live_server(app, **proxy_options(seeded.settings)) as base:
        csrf = _login_form(base)
        # Each try claims another client address: with no trusted proxy that must not matter.
        with ThreadPoolExecutor(TRIES) as pool:
            codes = list(pool.map(lambda i: _try(base, csrf, f"wrong-{i}", f"10.1.{i // 250}.{i % 250}"), range(TRIES)))
        checked = codes.count(401)  # "wrong user name or password": a password check was made
        assert 1 <= checked <= LIMIT, f"{checked} password checks for a limit of {LIMIT}"
        assert codes.count(429) == TRIES - checked, codes
        # What is left of the limit, one by one; then even the right password is refused.
        for _ in range(LIMIT - checked):
            assert _try(base, csrf, "wrong-again", "10.9.9.9") == 401
        assert _try(base, csrf, PASSWORDS["rita"], "10.9.9.9") == 429


def test_concurrent_wrong_passwords_on_sqlite_stop_at_the_limit(tmp_path: Path) -> None:
    seeded = seed_store(f"sqlite:///{tmp_path / 'limit.db'}", tmp_path / "images", login_max_failures=LIMIT)
    _limit_holds_under_concurrency(seeded)


@pytest.mark.postgres
def test_concurrent_wrong_passwords_on_postgres_stop_at_the_limit(pg_url: str, tmp_path: Path) -> None:
    seeded = seed_store(pg_url, tmp_path / "images", login_max_failures=LIMIT)
    try:
        _limit_holds_under_concurrency(seeded)
    finally:
        seeded.store.close()


def test_a_configured_proxy_is_believed(tmp_path: Path) -> None:
    seeded = seed_store(
        f"sqlite:///{tmp_path / 'proxy.db'}",
        tmp_path / "images",
        login_max_failures=1,
        trusted_proxies="127.0.0.1",
    )
    assert seeded.settings.trusted_proxies == ["127.0.0.1"]
    app = create_app(seeded.settings, seeded.store)
    with live_server(app, **proxy_options(seeded.settings)) as base:
        csrf = _login_form(base)
        assert _try(base, csrf, "wrong", "203.0.113.7") == 401
        assert _try(base, csrf, "wrong", "203.0.113.7") == 429  # that client is locked out...
        assert _try(base, csrf, PASSWORDS["rita"], "198.51.100.2") == 303  # ...another one is not

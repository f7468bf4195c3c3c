"""Review leases (issue 18): per content, expiry by timestamp, no two holders, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderator.review import leases, users
from moderator.review.app import create_app
from moderator.store.review_work import ReviewLease
from moderator.store.tables import Item, ItemSubmission, Role

from .conftest import seed_store
from .helpers import Seeded, item_id, login

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)
A, B = "a" * 64, "b" * 64
CLIENT_PASSWORD = "platform-secret-1"
ROB_PASSWORD = "rob-reviews-12"


def add_people(seeded: Seeded) -> dict[str, str]:
    """rob (a second reviewer) and plat (a client that sent the blocked and the suggestive item); their tokens."""
    with Session(seeded.store.engine) as db:
        users.add_user(db, "rob", Role.REVIEWER, ROB_PASSWORD)
        plat = users.add_user(db, "plat", Role.CLIENT, CLIENT_PASSWORD)
        db.flush()
        for short in ("blocked", "suggestive"):
            db.add(ItemSubmission(item_id=item_id(seeded.store, seeded.uris[short]), user_id=plat.id))
        tokens = {name: users.create_token(db, name, "test") for name in ("rita", "rob", "adam", "plat")}
        db.commit()
    return tokens


def work_store(request: pytest.FixtureRequest, tmp_path: Path) -> Seeded:
    """The review seed (five items, rita, adam, dora) on the backend of `request.param`."""
    url = f"sqlite:///{tmp_path / 'work.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    return seed_store(url, tmp_path / "images")


@pytest.fixture(params=["sqlite", "postgresql"])
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Seeded:
    return work_store(request, tmp_path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_lease_is_one_holders_until_it_expires(work: Seeded) -> None:
    with Session(work.store.engine) as db:
        first = leases.acquire(db, A, "rita", T0, TTL)
        assert first.mine and first.expires_at == T0 + TTL
        taken = leases.acquire(db, A, "rob", T0 + timedelta(seconds=10), TTL)
        assert (taken.mine, taken.holder, taken.expires_at) == (False, "rita", T0 + TTL)
        assert leases.acquire(db, B, "rob", T0, TTL).mine  # another content is free
        db.commit()

        renewed = leases.renew(db, A, "rita", T0 + timedelta(minutes=4), TTL)
        assert renewed.mine and renewed.expires_at == T0 + timedelta(minutes=9)
        row = db.get(ReviewLease, A)
        assert row is not None and row.acquired_at == T0  # a renewal keeps when it was taken
        # No job frees it: past expires_at it simply does not count, and another reviewer gets it.
        late = T0 + timedelta(minutes=9, seconds=1)
        assert leases.held_by(db, A, late) is None
        stolen = leases.acquire(db, A, "rob", late, TTL)
        assert stolen.mine and stolen.holder == "rob"
        db.refresh(row)
        assert row.acquired_at == late
        assert not leases.renew(db, A, "rita", late, TTL).mine
        db.commit()


def test_release_frees_only_the_holders_lease(work: Seeded) -> None:
    with Session(work.store.engine) as db:
        leases.acquire(db, A, "rita", T0, TTL)
        assert not leases.release(db, A, "rob")
        assert leases.held_by(db, A, T0, "rita") == leases.Lease(A, "rita", T0 + TTL, True)
        assert leases.release(db, A, "rita")
        assert leases.held_by(db, A, T0) is None
        assert leases.acquire(db, A, "rob", T0, TTL).mine
        db.commit()


def test_leased_by_others_is_what_the_queue_leaves_out(work: Seeded) -> None:
    with Session(work.store.engine) as db:
        leases.acquire(db, A, "rita", T0, TTL)
        leases.acquire(db, B, "rob", T0, timedelta(minutes=1))
        db.commit()
        assert set(db.scalars(leases.leased_by_others(db, "rob", T0))) == {A}
        assert set(db.scalars(leases.leased_by_others(db, "rita", T0))) == {B}
        assert set(db.scalars(leases.leased_by_others(db, "adam", T0))) == {A, B}
        assert set(db.scalars(leases.leased_by_others(db, "adam", T0 + timedelta(minutes=2)))) == {A}
        # As a filter on items (what the queue does with its sha256 column).
        with_b = db.scalars(select(Item.sha256).where(Item.sha256.not_in(leases.leased_by_others(db, "x", T0))))
        assert A not in set(with_b)
        # claim: the first free ones, in order, skipping others' holds.
        got = leases.claim(db, [A, B, "c" * 64, "d" * 64], "adam", T0, TTL, 1)
        assert [g.sha256 for g in got] == ["c" * 64]


def test_two_reviewers_racing_for_one_content_cannot_both_get_it(work: Seeded) -> None:
    barrier = threading.Barrier(6)
    won: list[str] = []
    errors: list[BaseException] = []

    def race(name: str) -> None:
        try:
            with Session(work.store.engine) as db:
                barrier.wait(10)
                if leases.acquire(db, A, name, T0, TTL).mine:
                    won.append(name)
                db.commit()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(won) == 1
    with Session(work.store.engine) as db:
        assert leases.held_by(db, A, T0) == leases.Lease(A, won[0], T0 + TTL, False)


def test_the_lease_api_and_pages(work: Seeded) -> None:
    tokens = add_people(work)
    app = create_app(work.settings, work.store)
    api = TestClient(app, follow_redirects=False)
    blocked = item_id(work.store, work.uris["blocked"])
    suggestive = item_id(work.store, work.uris["suggestive"])

    r = api.post(f"/api/items/{blocked}/lease", headers=bearer(tokens["rita"]))
    assert r.status_code == 200, r.text
    assert r.json()["holder"] == "rita" and r.json()["mine"] and r.json()["sha256"] == f"{1:064x}"
    r = api.post(f"/api/items/{blocked}/lease", headers=bearer(tokens["rob"]))
    assert r.status_code == 409 and "rita is working on this content" in r.json()["detail"]
    r = api.get("/api/leases", params={"item_id": [blocked, suggestive]}, headers=bearer(tokens["rob"]))
    assert [(x["item_id"], x["holder"], x["mine"]) for x in r.json()] == [(blocked, "rita", False)]
    assert api.post(f"/api/items/{blocked}/lease", headers=bearer(tokens["plat"])).status_code == 403

    # rob claims the next free content: not the blocked one rita holds (first in queue order).
    r = api.post("/api/queue/claim", json={"n": 2}, headers=bearer(tokens["rob"]))
    assert r.status_code == 200, r.text
    claimed = [x["item_id"] for x in r.json()["leases"]]
    assert len(claimed) == 2 and blocked not in claimed
    assert all(x["holder"] == "rob" for x in r.json()["leases"])

    # Pages: rob sees rita's hold on the item page; his "next free item" skips it and his own holds count.
    rob = TestClient(app, follow_redirects=False)
    login(rob, "rob", ROB_PASSWORD)
    page = rob.get(f"/items/{blocked}").text
    assert "Taken: rita is working on this content" in page and 'src="/static/work.js"' in page
    csrf = login(rob, "rob", ROB_PASSWORD)
    r = rob.post("/work/next", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/items/{claimed[0]}?")

    # Release, then rob can take it; the DELETE of someone else's lease changes nothing.
    assert api.delete(f"/api/items/{blocked}/lease", headers=bearer(tokens["rob"])).status_code == 204
    assert api.post(f"/api/items/{blocked}/lease", headers=bearer(tokens["rob"])).status_code == 409
    assert api.delete(f"/api/items/{blocked}/lease", headers=bearer(tokens["rita"])).status_code == 204
    assert api.post(f"/api/items/{blocked}/lease", headers=bearer(tokens["rob"])).json()["holder"] == "rob"


def test_nothing_free_says_so(work: Seeded) -> None:
    tokens = add_people(work)
    app = create_app(work.settings, work.store)
    api = TestClient(app, follow_redirects=False)
    assert len(api.post("/api/queue/claim", json={"n": 50}, headers=bearer(tokens["rita"])).json()["leases"]) == 4
    rob = TestClient(app, follow_redirects=False)
    csrf = login(rob, "rob", ROB_PASSWORD)
    r = rob.post("/work/next", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/queue#none-free"
    assert 'id="none-free"' in rob.get("/queue").text  # shown when the fragment targets it (CSS :target)
    # Without the CSRF token a session may not claim.
    assert rob.post("/work/next").status_code == 403

"""The dashboard's figures against reviews injected through review.decisions.decide, on SQLite and PostgreSQL.

Known scores and known verdicts give exact numbers: the precision reviewers measured per class,
the threshold reaching a target precision, the queue by decision and policy, counts per reviewer and day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from moderator.review import dashboard, decisions, svg
from moderator.review.app import create_app
from moderator.review.routes_dashboard import age
from moderator.store import ItemRecord
from moderator.store.queue_index import CONTENT_VIA
from moderator.store.tables import Item, Review, Verdict
from moderator.types import Action, ItemStatus

from .conftest import seed_store
from .helpers import Seeded, login, make_result

NOW = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
EXPLICIT = {"e1": 0.95, "e2": 0.9, "e3": 0.8, "e4": 0.7, "e5": 0.6}


@dataclass
class Board:
    seeded: Seeded
    ids: dict[str, int]


@pytest.fixture(params=["sqlite", "postgresql"])
def board(request: pytest.FixtureRequest, tmp_path: Path) -> Board:
    url = f"sqlite:///{tmp_path / 'dash.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    seeded = seed_store(url, tmp_path / "images")
    seeded.store.save_items(
        [
            ItemRecord(
                uri=f"/data/{name}.png",
                sha256=f"{0xE0 + i:064x}",
                size=1000,
                fingerprint=None,
                status=ItemStatus.OK,
                decision=Action.BLOCK,
                results=[make_result("nsfw", {"explicit": s, "neutral": 1 - s}, [("explicit", Action.BLOCK, s)])],
            )
            for i, (name, s) in enumerate(EXPLICIT.items())
        ]
    )
    with Session(seeded.store.engine) as db:
        ids = {uri: i for i, uri in db.execute(select(Item.id, Item.uri))}
        by_name = {n: ids[f"/data/{n}.png"] for n in EXPLICIT} | {n: ids[u] for n, u in seeded.uris.items()}
        # (item, verdict, reviewer, days ago, labels); e1's first label is superseded by the later confirm.
        plan = [
            ("e1", Verdict.DISMISS, "adam", 3, []),
            ("e1", Verdict.CONFIRM, "rita", 0, []),
            ("e2", Verdict.CONFIRM, "rita", 0, []),
            ("e3", Verdict.DISMISS, "adam", 1, []),
            ("e4", Verdict.CONFIRM, "rita", 1, []),
            ("e5", Verdict.DISMISS, "adam", 2, []),
            ("gore", Verdict.RELABEL, "rita", 0, ["violence/calm"]),  # gore was wrong, calm (not fired) is right
        ]
        when: list[datetime] = []

        def backdate(mapper: object, connection: object, review: Review) -> None:
            review.created_at = when[-1]  # reviews are append-only: the time is set before the insert

        event.listen(Review, "before_insert", backdate)
        try:
            for name, verdict, who, ago, labels in plan:
                item = db.get(Item, by_name[name])
                assert item is not None
                when.append(NOW - timedelta(days=ago, minutes=5))
                decisions.decide(db, item, decisions.DecisionIn(verdict=verdict, labels=labels), who, "web")
            db.flush()
        finally:
            event.remove(Review, "before_insert", backdate)
        # Arrivals: the blocked item came two days ago (updated since: rescanned), e5 long before the window.
        db.execute(
            update(Item)
            .where(Item.id == by_name["blocked"])
            .values(created_at=NOW - timedelta(days=2, hours=3), updated_at=NOW - timedelta(hours=1))
        )
        db.execute(update(Item).where(Item.id == by_name["e5"]).values(created_at=NOW - timedelta(days=40)))
        others = [i for n, i in by_name.items() if n not in ("blocked", "e5")]
        db.execute(update(Item).where(Item.id.in_(others)).values(created_at=NOW - timedelta(hours=2)))
        db.execute(update(Item).where(Item.id != by_name["blocked"]).values(updated_at=NOW - timedelta(hours=2)))
        # A decision on the same bytes elsewhere is copied by the queue (via "content"): not a reviewer's.
        copied = db.get(Item, by_name["e2"])
        assert copied is not None
        when.append(NOW)
        event.listen(Review, "before_insert", backdate)
        db.add(
            Review(
                item_uri="/elsewhere/e2.png",
                item_sha256=copied.sha256,
                reviewer="rita",
                via=CONTENT_VIA,
                verdict="confirm",
                old_decision="block",
                new_decision="block",
                labels=[],
                note="same content",
            )
        )
        db.flush()
        event.remove(Review, "before_insert", backdate)
        db.commit()
    return Board(seeded, by_name)


def _compute(board: Board, **kw: object) -> dashboard.Dashboard:
    with Session(board.seeded.store.engine) as db:
        return dashboard.compute(db, now=NOW, **kw)  # type: ignore[arg-type]


def test_precision_and_thresholds_per_class(board: Board) -> None:
    figures = _compute(board, target=0.9)
    classes = {(c.policy, c.name): c for c in figures.classes}
    assert sorted(classes) == [("nsfw", "explicit"), ("violence", "calm"), ("violence", "gore")]
    explicit = classes[("nsfw", "explicit")]
    # Latest labels: e1 +, e2 +, e3 -, e4 +, e5 - (adam's earlier dismissal of e1 is superseded).
    assert (explicit.confirmed, explicit.dismissed, explicit.missed) == (3, 2, 0)
    assert explicit.precision == pytest.approx(0.6)
    assert explicit.fires_at == pytest.approx(0.3)
    assert explicit.suggested == pytest.approx(0.9)  # >= .9: e1, e2 both right (precision 1)
    assert [round(p, 4) for _, p in explicit.curve] == [1.0, 1.0, 0.6667, 0.75, 0.6]
    gore, calm = classes[("violence", "gore")], classes[("violence", "calm")]
    assert (gore.confirmed, gore.dismissed, gore.precision, gore.suggested) == (0, 1, 0.0, None)
    assert (calm.confirmed, calm.dismissed, calm.missed, calm.precision) == (0, 0, 1, None)
    assert calm.suggested == pytest.approx(0.6)
    lower = {(c.policy, c.name): c for c in _compute(board, target=0.75).classes}
    assert lower[("nsfw", "explicit")].suggested == pytest.approx(0.7)  # >= .7: 3 right of 4


def test_queue_figures(board: Board) -> None:
    q = _compute(board, days=30).queue
    # Waiting: blocked (block), suggestive and hostile (review); the explicit five and gore were decided.
    assert q.waiting == {"block": 1, "review": 2} and q.total == 3 and q.places == 3
    assert [(w.policy, w.block, w.review) for w in q.by_policy] == [("nsfw", 1, 2)]
    assert q.oldest == NOW - timedelta(days=2, hours=3)
    assert age(NOW - q.oldest) == "2 d 3 h"
    assert len(q.arrived) == 30 and len(q.decided) == 30
    # Flagged items first stored per day: today every flagged one but blocked and e5 (outside the window).
    assert q.arrived[-1] == 7 and q.arrived[-3] == 1 and sum(q.arrived) == 8
    assert q.decided[-4:] == [1, 1, 2, 3]
    assert sum(q.decided) == 7


def test_reviewer_figures(board: Board) -> None:
    reviewers = {r.name: r for r in _compute(board, days=7).reviewers}
    assert sorted(reviewers) == ["adam", "rita"]
    rita, adam = reviewers["rita"], reviewers["adam"]
    assert rita.per_day == [0, 0, 0, 0, 0, 1, 3] and rita.verdicts == {"confirm": 3, "relabel": 1}
    assert adam.per_day == [0, 0, 0, 1, 1, 1, 0] and adam.verdicts == {"dismiss": 3}
    # A window of two days leaves out adam's older decisions.
    short = {r.name: r.total for r in _compute(board, days=2).reviewers}
    assert short == {"rita": 4, "adam": 1}


def test_dashboard_page_shows_the_figures(board: Board) -> None:
    client = TestClient(create_app(board.seeded.settings, board.seeded.store), follow_redirects=False)
    assert client.get("/dashboard", headers={"accept": "text/html"}).status_code == 303  # login first
    login(client, "rita")
    page = client.get("/dashboard", params={"target": "0.75", "days": "365"})
    assert page.status_code == 422  # at most 90 days
    page = client.get("/dashboard", params={"target": "0.75"})
    assert page.status_code == 200
    html = page.text
    assert 'data-class="nsfw/explicit"' in html and "60.0%" in html and ">0.700<" in html
    assert "<svg" in html and "<script" not in html.split("</head>")[1]  # charts inline, no inline script
    assert "style=" not in html  # the CSP forbids inline styles: SVG is coloured by classes only
    assert "probe train --from-reviews" in html and "moderator eval" in html
    csp = page.headers["content-security-policy"]
    assert "img-src 'self'" in csp and "unsafe-inline" not in csp


def test_svg_escapes_names() -> None:
    hostile = '<script>alert(1)</script>"'
    out = str(svg.bar([("s0", 3)], 3, hostile))
    assert "<script>" not in out and "&lt;script&gt;" in out and '"' + "<" not in out
    assert 'width="200"' in out  # the full scale
    score = str(svg.score_bar(0.25, 0.5, "x"))
    assert 'width="50"' in score and 'x1="100"' in score and "fired" not in score

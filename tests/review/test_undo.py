"""After a decision (issue 18): undo (itself an audited decision, per content), and a block added to a
hash list whose entries name the review, so that near-copies are caught; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderator.hashlists import HashKind, load_hash_list
from moderator.review import appeals
from moderator.review.app import create_app
from moderator.settings import SHIPPED_POLICIES
from moderator.store import ItemRecord
from moderator.store.queue_index import ContentDecision, QueueContent
from moderator.store.review_work import ReviewUndo
from moderator.store.tables import OutboxEvent, Review, ReviewLabel
from moderator.types import Action, ItemStatus

from .helpers import Seeded, item_id, login, make_result
from .test_leases import add_people, bearer, work_store


@pytest.fixture(params=["sqlite", "postgresql"])
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Seeded:
    return work_store(request, tmp_path)


def _decide(client: TestClient, csrf: str, item: int, verdict: str) -> None:
    r = client.post("/decisions", data={"csrf_token": csrf, "item_ids": item, "verdict": verdict, "next": "/queue"})
    assert r.status_code == 303, r.text


def _reviews(work: Seeded, uri: str) -> list[tuple[str, str, str, str]]:
    with Session(work.store.engine) as db:
        rows = db.execute(
            select(Review.reviewer, Review.verdict, Review.old_decision, Review.new_decision)
            .where(Review.item_uri == uri)
            .order_by(Review.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_undo_from_the_confirmation_puts_the_decision_back(work: Seeded) -> None:
    add_people(work)
    app = create_app(work.settings, work.store)
    rita = TestClient(app, follow_redirects=False)
    csrf = login(rita, "rita")
    suggestive = item_id(work.store, work.uris["suggestive"])
    _decide(rita, csrf, suggestive, "confirm")

    queue = rita.get("/queue").text
    assert 'id="undo-bar"' in queue and "Undo (u)" in queue
    [review_id] = re.findall(
        r'name="review_ids" value="(\d+)"', queue.split('action="/work/undo"')[1].split("</form>")[0]
    )
    assert f'href="/items/{suggestive}"' in queue.split('id="undo-bar"')[1].split("</form>")[0]
    with Session(work.store.engine) as db:
        assert db.get(QueueContent, f"{2:064x}") is None  # decided: out of the queue

    r = rita.post("/work/undo", data={"csrf_token": csrf, "review_ids": review_id, "next": "/queue"})
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    assert _reviews(work, work.uris["suggestive"]) == [
        ("rita", "confirm", "review", "block"),
        ("rita", "undo", "block", "review"),
    ]
    with Session(work.store.engine) as db:
        undo = db.get(ReviewUndo, int(review_id))
        assert undo is not None
        assert db.get(QueueContent, f"{2:064x}") is not None  # back in the queue
        assert db.get(ContentDecision, f"{2:064x}") is None
        events = db.scalars(select(OutboxEvent).where(OutboxEvent.item_id == suggestive).order_by(OutboxEvent.seq))
        last = [(e.type, e.payload["decision"]) for e in events][-2:]
    assert last == [("review.decided", "review"), ("item.decided", "review")]
    after = rita.get("/queue").text
    assert 'id="undo-bar"' not in after  # nothing left to undo
    # The item's history shows both decisions.
    history = rita.get(f"/items/{suggestive}").text
    assert "undo of review #" in history


def test_undo_reverts_every_place_of_the_content(work: Seeded) -> None:
    tokens = add_people(work)
    copy = work.folder / "copy-of-gore.png"
    copy.write_bytes(Path(work.uris["gore"]).read_bytes())
    gore_sha = f"{3:064x}"
    work.store.save_items(
        [
            ItemRecord(
                uri=str(copy),
                sha256=gore_sha,
                size=copy.stat().st_size,
                fingerprint=None,
                status=ItemStatus.OK,
                decision=Action.REVIEW,
                results=[make_result("violence", {"gore": 0.4}, [("gore", Action.REVIEW, 0.4)])],
            )
        ]
    )
    api = TestClient(create_app(work.settings, work.store), follow_redirects=False)
    gore = item_id(work.store, work.uris["gore"])
    r = api.post(f"/api/items/{gore}/decisions", json={"verdict": "confirm"}, headers=bearer(tokens["rita"]))
    assert r.status_code == 201
    review_id = r.json()["id"]
    assert [v for _, v, _, _ in _reviews(work, str(copy))] == ["confirm"]  # the decision reached the copy

    # rob may not undo rita's decision; the copy's own review is not the one to undo.
    assert api.post(f"/api/reviews/{review_id}/undo", headers=bearer(tokens["rob"])).status_code == 403
    with Session(work.store.engine) as db:
        reached = db.scalar(select(Review.id).where(Review.item_uri == str(copy)))
    r = api.post(f"/api/reviews/{reached}/undo", headers=bearer(tokens["rita"]))
    assert r.status_code == 409 and "same content" in r.json()["detail"]

    r = api.post(f"/api/reviews/{review_id}/undo", headers=bearer(tokens["rita"]))
    assert r.status_code == 201, r.text
    assert (r.json()["verdict"], r.json()["new_decision"], r.json()["note"]) == (
        "undo",
        "review",
        f"undo of review #{review_id}",
    )
    assert [v for _, v, _, _ in _reviews(work, str(copy))] == ["confirm", "undo"]
    with Session(work.store.engine) as db:
        queued = db.get(QueueContent, gore_sha)
        assert queued is not None and queued.items == 2
    again = api.post(f"/api/reviews/{review_id}/undo", headers=bearer(tokens["rita"]))
    assert again.status_code == 409 and "already undone" in again.json()["detail"]
    undo_id = r.json()["id"]
    assert api.post(f"/api/reviews/{undo_id}/undo", headers=bearer(tokens["rita"])).status_code == 409


def test_undo_rules_and_training_labels(work: Seeded) -> None:
    tokens = add_people(work)
    api = TestClient(create_app(work.settings, work.store), follow_redirects=False)
    blocked = item_id(work.store, work.uris["blocked"])
    first = api.post(f"/api/items/{blocked}/decisions", json={"verdict": "confirm"}, headers=bearer(tokens["rita"]))
    second = api.post(f"/api/items/{blocked}/decisions", json={"verdict": "dismiss"}, headers=bearer(tokens["rob"]))
    # rita's decision is no longer the latest: refused.
    r = api.post(f"/api/reviews/{first.json()['id']}/undo", headers=bearer(tokens["rita"]))
    assert r.status_code == 409 and "decided again" in r.json()["detail"]
    # rob undoes his dismissal: the label goes back to what rita's confirm taught (latest counts).
    assert api.post(f"/api/reviews/{second.json()['id']}/undo", headers=bearer(tokens["rob"])).status_code == 201
    with Session(work.store.engine) as db:
        labels = db.execute(select(ReviewLabel.label, ReviewLabel.positive).order_by(ReviewLabel.id)).all()
        assert [tuple(x) for x in labels] == [("explicit", True), ("explicit", False), ("explicit", True)]
        content = db.get(ContentDecision, f"{1:064x}")
        assert content is not None and content.review_id == first.json()["id"]  # rita's decision again
        # Too late: past the window (an admin may still).
        review = db.get(Review, first.json()["id"])
        assert review is not None
        late = review.created_at + timedelta(seconds=work.settings.review_undo_s + 1)
        window = timedelta(seconds=work.settings.review_undo_s)
        try:
            appeals.check_undoable(db, review, "rita", False, late, window)
        except appeals.WorkError as e:
            assert "too late" in str(e)
        else:
            raise AssertionError("an old decision was undoable")
        appeals.check_undoable(db, review, "adam", True, late, window)
    assert api.post(f"/api/reviews/{first.json()['id']}/undo", headers=bearer(tokens["adam"])).status_code == 201
    assert api.post("/api/reviews/999999/undo", headers=bearer(tokens["adam"])).status_code == 404


def _textured(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    pixels[:, :64] //= 3  # structure PDQ can see
    out = io.BytesIO()
    Image.fromarray(pixels).resize((256, 192)).save(out, format="PNG")
    return out.getvalue()


def test_a_block_goes_on_the_hash_list_and_catches_a_near_copy(work: Seeded, tmp_path: Path) -> None:
    from moderator.engine.prepare import items_from_bytes
    from moderator.engine.verdict import compile_policies
    from moderator.policy.load import load_policies

    tokens = add_people(work)
    settings = work.settings.model_copy(update={"hash_lists_dir": tmp_path / "lists"})
    data = _textured(7)
    path = work.folder / "textured.png"
    path.write_bytes(data)
    work.store.save_items(
        [
            ItemRecord(
                uri=str(path),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                fingerprint=None,
                status=ItemStatus.OK,
                decision=Action.REVIEW,
                results=[make_result("nsfw", {"explicit": 0.5}, [("explicit", Action.REVIEW, 0.5)])],
            )
        ]
    )
    app = create_app(settings, work.store)
    api = TestClient(app, follow_redirects=False)
    textured = item_id(work.store, str(path))
    suggestive = item_id(work.store, work.uris["suggestive"])
    confirm = api.post(f"/api/items/{textured}/decisions", json={"verdict": "confirm"}, headers=bearer(tokens["rita"]))
    review_id = confirm.json()["id"]
    dismissed = api.post(
        f"/api/items/{suggestive}/decisions", json={"verdict": "dismiss"}, headers=bearer(tokens["rita"])
    )

    # Only a block goes on a list.
    r = api.post(f"/api/reviews/{dismissed.json()['id']}/hashlist", headers=bearer(tokens["rita"]))
    assert r.status_code == 409 and "only a block" in r.json()["detail"]
    r = api.post(f"/api/reviews/{review_id}/hashlist", headers=bearer(tokens["rob"]))
    assert r.status_code == 201, r.text
    listed = r.json()
    assert (
        listed["kinds"] == ["sha256", "pdq"] and listed["added"] == 2 and listed["list_path"].endswith("known_bad.txt")
    )
    entries = load_hash_list(Path(listed["list_path"])).entries
    assert {(e.kind, e.source) for e in entries} == {
        (HashKind.SHA256, f"review:{review_id}"),
        (HashKind.PDQ, f"review:{review_id}"),
    }
    assert all("blocked by rita" in e.label for e in entries)
    again = api.post(f"/api/reviews/{review_id}/hashlist", headers=bearer(tokens["rob"])).json()
    assert (again["added"], again["present"]) == (0, 2)

    # The shipped hash-list policies read that list: the same bytes are blocked, a re-encoded copy flagged.
    near = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((250, 188)).save(near, format="JPEG", quality=80)
    loaded = load_policies([SHIPPED_POLICIES / "known_bad.yaml", SHIPPED_POLICIES / "known_bad_similar.yaml"])
    judged = compile_policies(loaded, settings).judge_all(
        items_from_bytes([("same", data), ("near", near.getvalue())]), settings
    )
    decisions = {p.item.uri: p.decision for p in judged}
    assert decisions == {"same": Action.BLOCK, "near": Action.REVIEW}

    # The page flow: the confirmation offers it after a block, and the note shows on return.
    rita = TestClient(app, follow_redirects=False)
    csrf = login(rita, "rita")
    blocked = item_id(work.store, work.uris["blocked"])
    _decide(rita, csrf, blocked, "confirm")
    queue = rita.get("/queue").text
    assert 'id="hashlist-button"' in queue
    form = queue.split('action="/work/hashlist"')[1].split("</form>")[0]
    ids = re.findall(r'name="review_ids" value="(\d+)"', form)
    r = rita.post("/work/hashlist", data={"csrf_token": csrf, "review_ids": ids, "next": "/queue"})
    assert r.status_code == 303 and r.headers["location"] == "/queue#listed"
    # The seeded item's sha256 is not its bytes': only the exact hash is listed, never a PDQ of other bytes.
    sources = [e for e in load_hash_list(Path(listed["list_path"])).entries if e.source == f"review:{ids[0]}"]
    assert [e.kind for e in sources] == [HashKind.SHA256] and sources[0].value == f"{1:064x}"


def test_the_undo_bar_offers_the_last_request_only(work: Seeded) -> None:
    import time

    add_people(work)
    rita = TestClient(create_app(work.settings, work.store), follow_redirects=False)
    csrf = login(rita, "rita")
    gore, hostile, suggestive = (item_id(work.store, work.uris[k]) for k in ("gore", "hostile", "suggestive"))

    def offered() -> list[str]:
        page = rita.get("/queue").text
        if 'action="/work/undo"' not in page:
            return []
        return re.findall(r'name="review_ids" value="(\d+)"', page.split('action="/work/undo"')[1].split("</form>")[0])

    bulk = {"csrf_token": csrf, "item_ids": [gore, hostile], "verdict": "dismiss", "next": "/queue"}
    assert rita.post("/decisions", data=bulk).status_code == 303
    assert len(offered()) == 2  # one request, two reviews: undone together
    time.sleep(0.6)
    _decide(rita, csrf, suggestive, "dismiss")
    [single] = offered()  # a later decision: only it
    r = rita.post("/work/undo", data={"csrf_token": csrf, "review_ids": single, "next": "/queue"})
    assert r.status_code == 303
    assert offered() == []  # the newest action was an undo: nothing more is offered
    assert [v for _, v, _, _ in _reviews(work, work.uris["gore"])] == ["dismiss"]

"""Review work in Debian's headless Chromium (Playwright through executable_path): two logged-in reviewers
colliding on a lease, undo after a decision, an appeal refused for the reviewer who made the decision and
decided by a second one. Screenshots go to $TMPDIR/moderator-review-work/."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderator.review.app import create_app
from moderator.store.queue_index import QueueContent
from moderator.store.review_work import Appeal
from moderator.store.tables import Review

from .helpers import PASSWORDS, Seeded, item_id, live_server
from .test_leases import ROB_PASSWORD, add_people

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(tempfile.gettempdir()) / "moderator-review-work"
REASONS = "Second look: a plain red square, nothing the policy blocks. The block is lifted."


def _login(browser: Any, server: str, name: str, password: str) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/queue")
    return context, page, errors


def test_leases_undo_and_appeals_between_two_reviewers(seeded: Seeded, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    SHOTS.mkdir(exist_ok=True)
    tokens = add_people(seeded)
    settings = seeded.settings.model_copy(update={"hash_lists_dir": tmp_path / "lists"})
    blocked = item_id(seeded.store, seeded.uris["blocked"])
    suggestive = item_id(seeded.store, seeded.uris["suggestive"])
    with live_server(create_app(settings, seeded.store)) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            _, rita, rita_errors = _login(browser, server, "rita", PASSWORDS["rita"])
            _, rob, rob_errors = _login(browser, server, "rob", ROB_PASSWORD)

            # rita opens the blocked item: she holds its content while the page is open.
            rita.goto(f"{server}/items/{blocked}")
            rita.wait_for_selector("#lease.mine")
            assert "You hold this content" in rita.inner_text("#lease")

            # rob's queue shows it taken; "next free item" gives him the next content instead.
            rob.goto(f"{server}/queue")
            taken = rob.locator(f'#queue tr.row[data-item="{blocked}"]')
            taken.locator(".taken-by").wait_for()
            assert "taken by rita" in taken.inner_text()
            rob.screenshot(path=str(SHOTS / "queue-taken-by-rita.png"), full_page=True)
            rob.goto(f"{server}/items/{blocked}")
            rob.wait_for_selector("#lease.taken")
            assert "rita is working on this content" in rob.inner_text("#lease")
            rob.screenshot(path=str(SHOTS / "item-taken-by-rita.png"), full_page=True)
            rob.goto(f"{server}/queue")
            rob.locator("body").click(position={"x": 5, "y": 5})
            rob.keyboard.press("n")
            rob.wait_for_url(f"**/items/{suggestive}?**")
            rob.wait_for_selector("#lease.mine")

            # rob confirms it with the keyboard: the confirmation offers undo; "u" takes it back.
            rob.locator("body").click(position={"x": 5, "y": 5})
            rob.keyboard.press("c")
            rob.wait_for_selector("#undo-bar")
            assert "block" in rob.inner_text("#undo-bar")
            rob.screenshot(path=str(SHOTS / "queue-undo-bar.png"), full_page=True)
            rob.keyboard.press("u")
            rob.wait_for_function("() => !document.getElementById('undo-bar')")
            assert rob.locator(f'#queue tr.row[data-item="{suggestive}"]').count() == 1  # back in the queue
            with Session(seeded.store.engine) as db:
                verdicts = db.execute(
                    select(Review.reviewer, Review.verdict).where(Review.item_uri == seeded.uris["suggestive"])
                ).all()
                assert [tuple(v) for v in verdicts] == [("rob", "confirm"), ("rob", "undo")]
                assert db.get(QueueContent, f"{2:064x}") is not None

            # rita confirms the blocked item; the platform appeals it.
            rita.locator("body").click(position={"x": 5, "y": 5})
            rita.keyboard.press("c")
            rita.wait_for_selector("#undo-bar")
            # After a block: add it to the hash list; the note shows on return.
            assert not rita.locator("#listed").is_visible()
            rita.click("#hashlist-button")
            rita.wait_for_url("**/queue#listed")
            assert rita.locator("#listed").is_visible()
            rita.screenshot(path=str(SHOTS / "queue-added-to-hash-list.png"), full_page=True)
            listed = (tmp_path / "lists" / "known_bad.txt").read_text()
            assert f"sha256 {1:064x}" in listed and "source=review:" in listed
            api = pw.request.new_context(base_url=server)
            r = api.post(
                f"/api/items/{blocked}/appeals",
                data={"statement": "It is my own photo, please look again."},
                headers={"Authorization": f"Bearer {tokens['plat']}"},
            )
            assert r.status == 201, r.text()
            appeal_id = r.json()["id"]

            # rita made the decision under appeal: the page says so, and the server refuses her.
            rita.goto(f"{server}/appeals")
            rita.click(f'a[href="/appeals/{appeal_id}"] >> nth=0')
            rita.wait_for_selector("#own-decision")
            rita.screenshot(path=str(SHOTS / "appeal-refused-for-rita.png"), full_page=True)
            csrf = rita.locator("meta[name=csrf-token]").get_attribute("content")
            refused = rita.request.post(
                f"{server}/appeals/{appeal_id}/decision",
                form={"csrf_token": csrf or "", "outcome": "upheld", "reasons": "mine"},
                headers={"Accept": "text/html"},
                max_redirects=0,
            )
            assert refused.status == 403 and "another reviewer must decide this appeal" in refused.text()

            # rob decides it: reversed, with the statement of reasons.
            rob.goto(f"{server}/appeals/{appeal_id}")
            rob.check("input[name=outcome][value=reversed]")
            rob.fill("textarea[name=reasons]", REASONS)
            rob.screenshot(path=str(SHOTS / "appeal-form-rob.png"), full_page=True)
            rob.click("#appeal-decide button[type=submit]")
            rob.wait_for_selector("#reasons")
            assert REASONS in rob.inner_text("#reasons")
            assert "Outcome: reversed" in rob.inner_text("main")
            rob.screenshot(path=str(SHOTS / "appeal-decided.png"), full_page=True)
            rob.goto(f"{server}/items/{blocked}")
            assert "reversed" in rob.inner_text(".item-appeals")
            api.dispose()

            # A narrow screen: the undo bar and the work links stack.
            phone = browser.new_context(viewport={"width": 390, "height": 800})
            small = phone.new_page()
            small.goto(f"{server}/login")
            small.fill("input[name=username]", "rita")
            small.fill("input[name=password]", PASSWORDS["rita"])
            small.click("button[type=submit]")
            small.wait_for_url(f"{server}/queue")
            small.screenshot(path=str(SHOTS / "queue-phone.png"), full_page=True)
            assert not [e for e in rita_errors + rob_errors if "Content Security Policy" in e], rita_errors + rob_errors
        finally:
            browser.close()
    with Session(seeded.store.engine) as db:
        appeal = db.get(Appeal, appeal_id)
        assert appeal is not None and (appeal.state, appeal.decided_by, appeal.decision) == ("reversed", "rob", "allow")
        latest = db.scalars(select(Review).where(Review.item_uri == seeded.uris["blocked"]).order_by(Review.id)).all()
        assert [(r.reviewer, r.via, r.new_decision) for r in latest] == [
            ("rita", "web", "block"),
            ("rob", "appeal", "allow"),
        ]

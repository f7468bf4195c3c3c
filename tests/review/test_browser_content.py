"""Decide once per content, in Debian's headless Chromium (Playwright through executable_path).

The same bytes at a file path, an archive member and an S3 key are one queue row with its three
places; confirming it with the keyboard decides every place, and a fourth copy uploaded later
arrives decided ("same content as item N"). Screenshots go to $TMPDIR/moderator-screens.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderator.store import ItemRecord
from moderator.store.tables import Item, Review
from moderator.types import Action, ItemStatus

from .helpers import PASSWORDS, Seeded, item_id, live_server, make_result

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENS = Path(tempfile.gettempdir()) / "moderator-screens"
SHARED = f"{2:064x}"  # the sha256 the seed gave "suggestive"


def _copy(uri: str) -> ItemRecord:
    result = make_result("nsfw", {"neutral": 0.4, "suggestive": 0.55}, [("suggestive", Action.REVIEW, 0.55)])
    return ItemRecord(uri=uri, sha256=SHARED, size=1, fingerprint=None, status=ItemStatus.OK, results=[result])


@pytest.fixture
def server(app: FastAPI, seeded: Seeded) -> Iterator[str]:
    seeded.store.save_items([_copy("/archives/holiday.zip#img/beach.png"), _copy("s3://uploads/users/42/beach.png")])
    with live_server(app) as url:
        yield url


def test_same_content_is_one_row_and_one_decision_for_every_place(server: str, seeded: Seeded) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    SCREENS.mkdir(parents=True, exist_ok=True)
    first = item_id(seeded.store, seeded.uris["suggestive"])
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{server}/login")
            page.fill("input[name=username]", "rita")
            page.fill("input[name=password]", PASSWORDS["rita"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/queue")
            rows = page.locator("#queue tr.row")
            assert rows.count() == 4  # five items flagged, four contents
            shared = page.locator(f'#queue tr.row[data-item="{first}"]')
            assert shared.locator("details.places summary").inner_text() == "3 places"
            shared.locator("details.places summary").click()
            places = shared.locator("details.places li")
            assert [places.nth(i).inner_text() for i in range(places.count())] == [
                f"file {seeded.uris['suggestive']}",
                "archive /archives/holiday.zip#img/beach.png",
                "s3 s3://uploads/users/42/beach.png",
            ]
            page.screenshot(path=str(SCREENS / "queue-same-content.png"), full_page=True)

            # Opening its places made the row the current one (a click selects a row); c confirms it.
            assert "current" in (shared.get_attribute("class") or "")
            page.keyboard.press("c")
            page.wait_for_function("() => document.querySelectorAll('#queue tr.row').length === 3")
            assert page.locator(f'#queue tr.row[data-item="{first}"]').count() == 0

            # A fourth copy arrives after the decision: decided on arrival, never queued.
            seeded.store.save_items([_copy("upload:" + SHARED)])
            late = item_id(seeded.store, "upload:" + SHARED)
            page.reload()
            assert page.locator("#queue tr.row").count() == 3
            page.goto(f"{server}/items/{late}")
            history = page.locator("body").inner_text()
            assert f"same content as item {first}" in history and "rita (content)" in history
            page.screenshot(path=str(SCREENS / "item-arrived-decided.png"), full_page=True)
            assert not [e for e in errors if "Content Security Policy" in e], errors
        finally:
            browser.close()
    with Session(seeded.store.engine) as db:
        decided = db.execute(
            select(Item.uri, Review.reviewer, Review.via, Review.new_decision)
            .join(Review, Review.item_uri == Item.uri)
            .where(Item.sha256 == SHARED)
        ).all()
    assert sorted(v for _, _, v, _ in decided) == ["content", "content", "content", "web"]
    assert {(who, d) for _, who, _, d in decided} == {("rita", "block")}

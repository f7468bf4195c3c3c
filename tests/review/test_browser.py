"""End to end in Debian's headless Chromium (Playwright through executable_path, never a downloaded browser).

Log in, filter the queue, confirm the selected item with the keyboard, see it leave the queue.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from .helpers import PASSWORDS, Seeded

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(app: FastAPI) -> Iterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    srv.should_exit = True
    thread.join(10)


def test_login_filter_and_confirm_with_keyboard(server: str, seeded: Seeded) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    OUTPUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{server}/queue")
            assert "/login" in page.url  # anonymous: sent to log in
            page.fill("input[name=username]", "rita")
            page.fill("input[name=password]", PASSWORDS["rita"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/queue")
            assert page.locator("#queue tr.row").count() == 4

            page.select_option("select[name=decision]", "review")
            page.fill("input[name=policy]", "nsfw")
            page.click("#filters button[type=submit]")
            page.wait_for_url("**decision=review**")
            rows = page.locator("#queue tr.row")
            assert rows.count() == 2  # suggestive and the hostile name
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("j")  # second row becomes current
            second = rows.nth(1)
            assert "current" in (second.get_attribute("class") or "")
            chosen = second.locator("td.uri").inner_text()
            page.screenshot(path=str(OUTPUT / "review-queue-before.png"), full_page=True)

            page.keyboard.press("c")
            page.wait_for_load_state("load")
            page.wait_for_function("() => document.querySelectorAll('#queue tr.row').length === 1")
            assert chosen not in page.locator("#queue").inner_text()
            assert "decision=review" in page.url  # back on the same filtered queue
            page.screenshot(path=str(OUTPUT / "review-queue-after.png"), full_page=True)
            assert not [e for e in errors if "Content Security Policy" in e], errors
        finally:
            browser.close()
    # The keyboard decision is in the audit, as the reviewer who made it.
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from moderator.store.tables import Review

    with Session(seeded.store.engine) as db:
        reviews = db.execute(select(Review.item_uri, Review.reviewer, Review.verdict)).all()
    assert [(uri.endswith(chosen.rsplit("/", 1)[-1]), who, v) for uri, who, v in reviews] == [(True, "rita", "confirm")]

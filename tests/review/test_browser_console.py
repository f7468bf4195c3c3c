"""The console's pages in Debian's headless Chromium (Playwright through executable_path): the dashboard,
a phone-width screen with no sideways scrolling, every control reachable with Tab, the "?" overlay,
and an image that cannot be shown saying why. Screenshots go to $TMPDIR/moderator-screens.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session

from moderator.review import decisions
from moderator.store import ItemRecord
from moderator.store.tables import Item, Verdict
from moderator.types import Action, ItemStatus

from .helpers import PASSWORDS, Seeded, item_id, live_server

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENS = Path(tempfile.gettempdir()) / "moderator-screens"
PHONE = {"width": 390, "height": 844}
# What a keyboard user must be able to reach: every visible, enabled control.
FOCUSABLE = """() => Array.from(document.querySelectorAll(
  'a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]:not([tabindex="-1"])'))
  .filter(e => !e.disabled && e.getClientRects().length && !e.closest('dialog:not([open])'))
  .map(e => e.outerHTML.slice(0, 120))"""


@pytest.fixture
def server(app: FastAPI, seeded: Seeded) -> Iterator[str]:
    with Session(seeded.store.engine) as db:  # two decisions for the dashboard to show
        for name, verdict in (("suggestive", Verdict.CONFIRM), ("hostile", Verdict.DISMISS)):
            item = db.get(Item, item_id(seeded.store, seeded.uris[name]))
            assert item is not None
            decisions.decide(db, item, decisions.DecisionIn(verdict=verdict), "rita", "web")
        db.commit()
    gone = seeded.folder / "moved-away.png"
    seeded.store.save_items(
        [
            ItemRecord(
                uri=str(gone), sha256="d" * 64, size=10, fingerprint=None, status=ItemStatus.OK, decision=Action.REVIEW
            )
        ]
    )
    with live_server(app) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    SCREENS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            yield b
        finally:
            b.close()


def _logged_in(browser: Any, server: str, viewport: dict[str, int]) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server}/login")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", PASSWORDS["rita"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/queue")
    return page, errors


def _csp(errors: list[str]) -> list[str]:
    return [e for e in errors if "Content Security Policy" in e or "Refused" in e]


def test_dashboard_renders_its_charts(browser: Any, server: str) -> None:
    page, errors = _logged_in(browser, server, {"width": 1280, "height": 900})
    page.click("header nav a[href='/dashboard']")
    page.wait_for_url(f"{server}/dashboard")
    assert page.locator("svg.chart").count() >= 5
    # The figures of the two decisions: nsfw/suggestive 1 confirmed, 1 dismissed.
    row = page.locator("#classes tr[data-class='nsfw/suggestive']")
    assert row.locator("td.precision").inner_text() == "50.0%"
    assert page.locator("#reviewers tr[data-reviewer='rita'] td.n").first.inner_text() == "2"
    # The SVG is drawn and coloured by the stylesheet (no style attribute), so its bars have real size.
    box = page.locator("#classes svg.chart.bar").first.bounding_box()
    assert box and box["width"] > 100 and box["height"] >= 10
    fill = page.eval_on_selector("#classes svg.chart.bar rect.confirmed", "e => getComputedStyle(e).fill")
    assert fill == "rgb(21, 128, 61)"
    page.screenshot(path=str(SCREENS / "dashboard.png"), full_page=True)
    assert not _csp(errors), errors


@pytest.mark.parametrize("path", ["/queue", "/dashboard", "/items/{blocked}", "/account", "/docs"])
def test_phone_width_has_no_sideways_scroll(browser: Any, server: str, seeded: Seeded, path: str) -> None:
    page, errors = _logged_in(browser, server, PHONE)
    target = path.format(blocked=item_id(seeded.store, seeded.uris["blocked"]))
    page.goto(f"{server}{target}")
    page.wait_for_load_state("load")
    wide = page.evaluate("document.scrollingElement.scrollWidth")
    assert wide <= page.evaluate("innerWidth"), f"{target}: {wide}px wide on a 390px screen"
    name = target.strip("/").replace("/", "-") or "home"
    page.screenshot(path=str(SCREENS / f"phone-{name}.png"), full_page=True)
    assert not _csp(errors), errors


def test_question_mark_opens_the_shortcuts_and_tab_reaches_every_control(
    browser: Any, server: str, seeded: Seeded
) -> None:
    page, errors = _logged_in(browser, server, {"width": 1280, "height": 900})
    blocked = item_id(seeded.store, seeded.uris["blocked"])
    for path in ("/queue", f"/items/{blocked}", "/dashboard", "/account", "/docs"):
        page.goto(f"{server}{path}")
        page.wait_for_load_state("load")
        wanted = page.evaluate(FOCUSABLE)
        reached: list[str] = []
        page.locator("body").focus()
        for _ in range(2 * len(wanted) + 20):  # once round the page: until focus comes back to the first control
            page.keyboard.press("Tab")
            now = page.evaluate("document.activeElement ? document.activeElement.outerHTML.slice(0, 120) : ''")
            if reached and now == reached[0]:
                break
            reached.append(now)
        missing = [w for w in wanted if w not in reached]
        assert not missing, f"{path}: Tab never reaches {missing}"
        page.keyboard.press("Escape")
        page.evaluate("document.activeElement && document.activeElement.blur()")  # "?" in a field is typed
        page.keyboard.press("?")
        assert page.evaluate("document.getElementById('shortcuts').open")
        assert page.locator("#shortcuts kbd", has_text="j").count() >= 1
        if path == "/queue":
            page.screenshot(path=str(SCREENS / "shortcuts.png"))
        if path.startswith("/items/"):
            page.keyboard.press("Escape")
            page.screenshot(path=str(SCREENS / "item-desktop.png"), full_page=True)
            page.keyboard.press("?")
        page.keyboard.press("Escape")
        assert not page.evaluate("document.getElementById('shortcuts').open")
    # The blurred image of a blocked item is a control: focused with Tab, revealed with Enter.
    page.goto(f"{server}/items/{item_id(seeded.store, seeded.uris['blocked'])}")
    page.locator("img.full").focus()
    page.keyboard.press("Enter")
    assert "revealed" in (page.get_attribute("img.full", "class") or "")
    assert page.url.endswith(f"/items/{item_id(seeded.store, seeded.uris['blocked'])}")  # Enter did not navigate
    assert not _csp(errors), errors


def test_an_image_that_cannot_be_shown_says_why(browser: Any, server: str, seeded: Seeded) -> None:
    page, errors = _logged_in(browser, server, {"width": 1280, "height": 900})
    page.goto(f"{server}/items/{item_id(seeded.store, str(seeded.folder / 'moved-away.png'))}")
    note = page.locator("p.unavailable")
    note.wait_for()
    page.wait_for_function("() => document.querySelector('p.unavailable').textContent.includes(':')")
    assert note.inner_text().startswith("The image cannot be shown: the server cannot find it")
    page.screenshot(path=str(SCREENS / "item-unavailable.png"), full_page=True)
    assert not _csp(errors), errors

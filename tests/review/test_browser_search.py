"""The search page in Debian's headless Chromium (Playwright through executable_path): by text, by image.

CLIP is the tiny architecture with seeded random weights, so the query embeddings mean nothing;
the test computes them the way the server does (same process, same weights) and stores known
embeddings around them, then checks the page ranks the items by those vectors, blurs the
blocked one, applies a filter and links to the items and to "more like this".
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from moderator.engine.prepare import items_from_bytes
from moderator.engine.search import image_query, text_query
from moderator.models.ids import model_id_for
from moderator.review.app import create_app

from .conftest import seed_store
from .helpers import PASSWORDS, Seeded
from .test_browser import CHROMIUM, server  # noqa: F401 - the uvicorn fixture

pytestmark = pytest.mark.browser

SHOTS = Path(tempfile.gettempdir()) / "moderator-search-shots"
TEXT = "red things on a table"


def around(q: np.ndarray, cosines: list[float], seed: int) -> list[np.ndarray]:
    """Unit vectors with these cosines to q (each off q in its own random direction)."""
    q = q / np.linalg.norm(q)
    rng = np.random.default_rng(seed)
    out = []
    for c in cosines:
        r = rng.normal(size=q.shape)
        r -= (r @ q) * q
        r /= np.linalg.norm(r)
        out.append((c * q + np.sqrt(1 - c * c) * r).astype(np.float32))
    return out


def upload_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 240)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tiny_seeded(tmp_path: Path) -> Seeded:
    return seed_store(
        f"sqlite:///{tmp_path / 'review.db'}",
        tmp_path / "images",
        model="test-tiny",
        pretrained="none",
        device="cpu",
        search_index_dir=tmp_path / "ix",
    )


@pytest.fixture
def app(tiny_seeded: Seeded) -> FastAPI:
    return create_app(tiny_seeded.settings, tiny_seeded.store)


def store_embeddings(seeded: Seeded, order: list[str], query: np.ndarray, seed: int) -> None:
    """The seeded items' contents get embeddings with falling cosine to `query`, in `order`."""
    from sqlalchemy import delete, select

    from moderator.store.tables import Embedding, Item

    model_id = model_id_for(seeded.settings)
    with seeded.store.session() as s:
        s.execute(delete(Embedding))
        shas = {uri: str(sha) for uri, sha in s.execute(select(Item.uri, Item.sha256))}
    vectors = around(query, [0.95, 0.7, 0.4, 0.1, -0.3], seed)
    seeded.store.save_embeddings(
        {shas[seeded.uris[name]]: v[None] for name, v in zip(order, vectors, strict=True)}, model_id
    )


def names_on_page(page: Any, seeded: Seeded) -> list[str]:
    by_uri = {uri: name for name, uri in seeded.uris.items()}
    cells = page.locator("#hits td.uri a")
    return [by_uri[cells.nth(i).inner_text()] for i in range(cells.count())]


@pytest.fixture
def browser_page(server: str) -> Iterator[Any]:  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    SHOTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{server}/search")
            page.fill("input[name=username]", "rita")
            page.fill("input[name=password]", PASSWORDS["rita"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/search")
            yield page
            assert not [e for e in errors if "Content Security Policy" in e], errors
        finally:
            browser.close()


def test_search_by_text_filters_and_more_like_this(browser_page: Any, tiny_seeded: Seeded, server: str) -> None:  # noqa: F811
    page = browser_page
    order = ["blocked", "gore", "allowed", "suggestive", "hostile"]
    store_embeddings(tiny_seeded, order, text_query(tiny_seeded.settings, TEXT), seed=1)
    page.fill("#search-text input[name=q]", TEXT)
    page.click("#search-text button[type=submit]")
    page.wait_for_selector("#hits")
    assert names_on_page(page, tiny_seeded) == order
    first = page.locator("#hits tr.hit").first
    assert "blurred" in (first.locator("img.thumb").get_attribute("class") or "")  # blocked: blurred, as in the queue
    assert "blurred" not in (page.locator("#hits tr.hit").nth(1).locator("img.thumb").get_attribute("class") or "")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#hits img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(SHOTS / "search-text.png"), full_page=True)

    page.select_option("#search-text select[name=decision]", "review")
    page.click("#search-text button[type=submit]")
    page.wait_for_url("**decision=review**")
    assert names_on_page(page, tiny_seeded) == ["gore", "suggestive", "hostile"]
    page.screenshot(path=str(SHOTS / "search-text-review-only.png"), full_page=True)

    # "More like this" from an item page: the item itself is left out, the rest ranked by their vectors.
    page.click("#hits tr.hit >> nth=0 >> td.uri a")
    page.wait_for_selector("#more-like-this")
    page.click("#more-like-this")
    page.wait_for_selector("#hits")
    got = names_on_page(page, tiny_seeded)
    assert "gore" not in got and sorted(got) == sorted(set(order) - {"gore"})


def test_search_by_uploaded_image(browser_page: Any, tiny_seeded: Seeded, tmp_path: Path) -> None:
    page = browser_page
    data = upload_png()
    query = image_query(tiny_seeded.settings, items_from_bytes([("the upload", data)])[0])
    order = ["suggestive", "allowed", "hostile", "blocked", "gore"]
    store_embeddings(tiny_seeded, order, query, seed=2)
    path = tmp_path / "example.png"
    path.write_bytes(data)
    page.set_input_files("#search-image input[name=file]", str(path))
    page.click("#search-image button[type=submit]")
    page.wait_for_selector("#hits")
    assert names_on_page(page, tiny_seeded) == order
    blurred = [
        "blurred" in (page.locator("#hits tr.hit").nth(i).locator("img.thumb").get_attribute("class") or "")
        for i in range(5)
    ]
    assert blurred == [False, False, False, True, False]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#hits img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(SHOTS / "search-image.png"), full_page=True)

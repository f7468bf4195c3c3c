"""Pages and images: security headers, re-encoded images, escaped metadata, the item page."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from PIL import Image

from moderator.store import ItemRecord
from moderator.types import Action, ItemStatus

from .helpers import HOSTILE, Seeded, item_id, login


def _assert_headers(r: object) -> None:
    headers = r.headers  # type: ignore[attr-defined]
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"


def test_every_response_has_security_headers(client: TestClient) -> None:
    for r in (client.get("/healthz"), client.get("/login"), client.get("/queue"), client.get("/static/review.js")):
        _assert_headers(r)
    login(client, "rita")
    _assert_headers(client.get("/queue"))


def test_image_is_a_reencoded_jpeg_thumbnail(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    r = client.get(f"/items/{item_id(seeded.store, seeded.uris['blocked'])}/image?size=32")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    _assert_headers(r)
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) == 32
    pixel = img.convert("RGB").getpixel((10, 10))
    assert isinstance(pixel, tuple)
    red, green, blue = pixel[:3]
    assert red > 150 and green < 80 and blue < 80  # the item's own pixels


def test_svg_or_html_is_never_served(client: TestClient, seeded: Seeded) -> None:
    svg = seeded.folder / "evil.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    seeded.store.save_items(
        [
            ItemRecord(
                uri=str(svg), sha256="e" * 64, size=10, fingerprint=None, status=ItemStatus.OK, decision=Action.REVIEW
            )
        ]
    )
    login(client, "rita")
    r = client.get(f"/items/{item_id(seeded.store, str(svg))}/image")
    assert r.status_code == 404
    assert "svg" not in r.headers["content-type"] and "<script>" not in r.text


def test_hostile_metadata_is_escaped(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    queue = client.get("/queue").text
    assert HOSTILE not in queue and "&lt;img src=x onerror=alert(1)&gt;.png" in queue
    page = client.get(f"/items/{item_id(seeded.store, seeded.uris['hostile'])}").text
    assert "<script>alert('meta')</script>" not in page and "&lt;script&gt;" in page
    assert HOSTILE not in page


def test_item_page_shows_scores_fired_classes_and_versions(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    page = client.get(f"/items/{item_id(seeded.store, seeded.uris['blocked'])}").text
    assert '<meter min="0" max="1" value="0.91">' in page
    assert "v1abc" in page and "test-tiny" in page and "a photo of explicit" in page
    assert 'class="full blurred"' in page  # blocked: blurred until clicked
    assert "No reviewer decision yet" in page


def test_queue_page_lists_and_filters(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    page = client.get("/queue", params={"decision": "block", "policy": ""}).text
    assert "1 item waiting" in page and "blocked.png" in page and "suggestive.png" not in page
    assert client.get("/queue", params={"min_score": "7"}).status_code == 422

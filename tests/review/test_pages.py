"""Pages and images: security headers, re-encoded images, escaped metadata, the item page."""

from __future__ import annotations

import io
import re
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from moderator.store import ItemRecord
from moderator.types import Action, ItemStatus
from tests.sources.conftest import aws, bucket, moto_endpoint, s3  # noqa: F401  (moto fixtures)

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
    # Scores on the one 0..1 scale (an SVG bar of 200 units for every policy), the threshold ticked.
    assert 'aria-label="explicit 0.910 (fires at 0.300)"' in page
    assert '<rect class="fill fired block" x="0" y="2" width="182" height="10">' in page
    assert '<line class="threshold" x1="60"' in page
    assert "v1abc" in page and "test-tiny" in page and "a photo of explicit" in page
    assert 'class="full blurred"' in page  # blocked: blurred until clicked
    assert "No reviewer decision yet" in page


def test_queue_page_lists_and_filters(client: TestClient, seeded: Seeded) -> None:
    login(client, "rita")
    page = client.get("/queue", params={"decision": "block", "policy": ""}).text
    assert re.search(r"\b1 (item|content) waiting", page) and "blocked.png" in page and "suggestive.png" not in page
    assert client.get("/queue", params={"min_score": "7"}).status_code == 422


def _save(seeded: Seeded, uri: str, meta: dict[str, Any], **kw: Any) -> int:
    values: dict[str, Any] = {"sha256": "f" * 64, "size": 1_450_000, "decision": Action.REVIEW, "status": ItemStatus.OK}
    values.update(kw)
    seeded.store.save_items([ItemRecord(uri=uri, fingerprint=None, meta=meta, **values)])
    return item_id(seeded.store, uri)


def test_item_page_metadata_is_humane(client: TestClient, seeded: Seeded) -> None:
    meta = {
        "bucket": "uploads",
        "key": "a/b.jpg",
        "etag": "abc123",
        "version_id": None,
        "size": 1_450_000,
        "last_modified": "2026-11-02T08:15:00+00:00",
        "mtime_ns": 1_764_000_000_000_000_000,
        "format": "JPEG",
        "width": 640,
        "height": 480,
        "frames": 1,
        "empty": "",
    }
    iid = _save(seeded, "s3://uploads/a/b.jpg", meta)
    login(client, "rita")
    page = client.get(f"/items/{iid}").text
    for raw in ("mtime_ns", "version_id", "None", "1764000000000000000", "last_modified", "<dt>Empty</dt>"):
        assert raw not in page, raw
    assert "<dt>S3 object</dt><dd>bucket uploads, key a/b.jpg</dd>" in page
    assert "<dt>Image</dt><dd>JPEG, 640 × 480 px</dd>" in page
    assert "<dt>Size</dt><dd>1.4 MB</dd>" in page
    assert "<dt>Modified</dt><dd>2026-11-02 08:15 UTC</dd>" in page
    assert "<dt>Modified</dt><dd>2025-11-24 16:00 UTC</dd>" in page  # mtime_ns, as a time


def test_an_image_that_cannot_be_shown_says_why(
    client: TestClient,
    seeded: Seeded,
    bucket: str,  # noqa: F811
) -> None:
    login(client, "rita")
    gone = _save(seeded, f"s3://{bucket}/never-uploaded.jpg", {}, sha256="a" * 64)
    r = client.get(f"/items/{gone}/image")
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert detail.startswith("the server cannot read the S3 object: ") and "no longer exists" in detail, detail
    missing = seeded.folder / "moved-away.png"
    lost = _save(seeded, str(missing), {}, sha256="b" * 64)
    assert client.get(f"/items/{lost}/image").json()["detail"].startswith("the server cannot find it")
    deleted = _save(seeded, str(seeded.folder / "deleted.png"), {}, sha256="c" * 64, status=ItemStatus.DELETED)
    page = client.get(f"/items/{deleted}").text
    assert "The image cannot be shown: the source object was deleted." in page
    assert f'src="/items/{deleted}/image"' not in page

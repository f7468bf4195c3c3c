"""Search over stored embeddings: exact cosine with known vectors; the API route."""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from moderator.engine.search import SearchIndex, top_k
from moderator.settings import Settings
from moderator.store import Store
from moderator.store.bulk import load_embedding_matrix
from tests.lifecycle import MODEL_ID, axis, seed, sha_of


def test_top_k_is_exact_cosine_best_first(store: Store) -> None:
    seed(store, {"x": axis(0), "xy": axis(0, 1), "y": axis(1), "z": axis(2)})
    matrix = load_embedding_matrix(store, MODEL_ID)
    found = top_k(matrix, axis(0) * 3.0, 3, chunk=2)  # any query length: it is normalised
    got = [(matrix.shas[i], round(s, 3)) for i, s in found]
    assert got == [
        (sha_of("x"), 1.0),
        (sha_of("xy"), round(1 / np.sqrt(2), 3)),
        (sha_of("y") if sha_of("y") < sha_of("z") else sha_of("z"), 0.0),
    ]


def test_an_item_with_frames_scores_its_best_frame(store: Store) -> None:
    seed(store, {"anim": np.stack([axis(2), axis(1)]), "still": axis(0, 1)})
    index = SearchIndex(store, MODEL_ID)
    hits = index.search(axis(1), 2)
    assert [h.uris for h in hits] == [["anim"], ["still"]]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_index_reloads_when_embeddings_are_added_and_skips_orphans(store: Store) -> None:
    seed(store, {"x": axis(0)})
    index = SearchIndex(store, MODEL_ID)
    assert [h.uris for h in index.search(axis(1), 5)] == [["x"]]
    store.save_embeddings({"f" * 64: axis(1)[None]}, MODEL_ID)  # no item: an eval image, say
    seed(store, {"y": axis(1)})
    assert [h.uris for h in index.search(axis(1), 5)] == [["y"], ["x"]]


def test_wrong_dimension_is_refused(store: Store) -> None:
    seed(store, {"x": axis(0)})
    with pytest.raises(ValueError, match="another model"):
        SearchIndex(store, MODEL_ID).search(np.ones(3), 1)


def test_api_more_like_this(tmp_path: Path) -> None:
    from moderator.review import users
    from moderator.review.app import create_app
    from moderator.store.tables import Role

    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(url)
    seed(store, {"x": axis(0), "near": axis(0, 1), "far": axis(2)})
    with Session(store.engine) as db:
        users.add_user(db, "rita", Role.REVIEWER, "a long password 123")
        db.commit()
    settings = Settings(database_url=url, model="test-tiny", pretrained="none", device="cpu")
    client = TestClient(create_app(settings, store))
    auth = {"Authorization": "Basic " + base64.b64encode(b"rita:a long password 123").decode()}
    assert client.get(f"/api/search?sha256={sha_of('x')}").status_code == 401
    r = client.get(f"/api/search?sha256={sha_of('x')}&k=1", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == [{"sha256": sha_of("near"), "score": pytest.approx(1 / np.sqrt(2), abs=1e-3), "uris": ["near"]}]
    assert client.get("/api/search?sha256=" + "0" * 64, headers=auth).status_code == 404
    assert client.get("/api/search", headers=auth).status_code == 422


def test_a_repeated_text_query_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from moderator.engine.search import text_query
    from moderator.models import clip as clip_module

    calls: list[list[str]] = []

    class Encoder:
        def encode_text(self, texts: list[str]) -> np.ndarray:
            calls.append(texts)
            return np.stack([axis(len(t) % 8) for t in texts])

    monkeypatch.setattr(clip_module, "get_clip_model", lambda settings: Encoder())
    tiny = Settings(model="test-tiny", pretrained="none", device="cpu")
    first = text_query(tiny, "a red car, cached")
    assert np.array_equal(text_query(tiny, "a red car, cached"), first) and not first.flags.writeable
    assert calls == [["a red car, cached"]]
    text_query(tiny.model_copy(update={"model": "ViT-B-32"}), "a red car, cached")  # another model: encoded again
    assert len(calls) == 2


def test_api_search_by_uploaded_image(tiny_settings: Settings, store: Store, photo_dir: Path) -> None:
    from moderator.pipeline import Pipeline
    from moderator.review import users
    from moderator.review.app import create_app
    from moderator.store.tables import Role

    Pipeline(tiny_settings, store).scan_targets([str(photo_dir)])
    with Session(store.engine) as db:
        users.add_user(db, "rita", Role.REVIEWER, "a long password 123")
        db.commit()
    client = TestClient(create_app(tiny_settings, store))
    auth = {"Authorization": "Basic " + base64.b64encode(b"rita:a long password 123").decode()}
    upload = {"file": ("p2.jpg", (photo_dir / "p2.jpg").read_bytes(), "image/jpeg")}
    r = client.post("/api/search/image?k=2", files=upload, headers=auth)
    assert r.status_code == 200, r.text
    first = r.json()[0]
    assert first["uris"][0].endswith("p2.jpg") and first["score"] == pytest.approx(1.0, abs=1e-3)
    r = client.post("/api/search/image", files={"file": ("x.jpg", b"not an image", "image/jpeg")}, headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith("the upload: ")


def test_search_page_filters_csrf_and_errors(tmp_path: Path) -> None:
    """The review UI's /search over known vectors: filters narrow, an upload needs the CSRF token."""
    from moderator.review.app import create_app
    from moderator.store.tables import Item
    from tests.review.conftest import seed_store
    from tests.review.helpers import item_id, login

    seeded = seed_store(
        f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "img", model="test-tiny", pretrained="none", device="cpu"
    )
    with Session(seeded.store.engine) as db:
        shas = {uri: str(sha) for uri, sha in db.execute(select(Item.uri, Item.sha256))}
    vectors = {
        "blocked": axis(0),
        "suggestive": axis(0, 1),
        "gore": axis(0, 1, 2),
        "allowed": axis(3),
        "hostile": axis(4),
    }
    seeded.store.save_embeddings({shas[seeded.uris[n]]: v[None] for n, v in vectors.items()}, MODEL_ID)
    client = TestClient(create_app(seeded.settings, seeded.store), follow_redirects=False)
    csrf = login(client, "rita")
    like = item_id(seeded.store, seeded.uris["blocked"])

    def names(html: str) -> list[str]:
        found = re.findall(r'<td class="uri"><a href="[^"]*">([^<]*)</a>', html)
        by_uri = {escape(uri): name for name, uri in seeded.uris.items()}
        return [by_uri[u] for u in found]

    r = client.get(f"/search?like={like}")
    assert r.status_code == 200 and names(r.text)[:2] == ["suggestive", "gore"]  # itself left out
    r = client.get(f"/search?like={like}&decision=review&source={seeded.uris['gore'][:-8]}")
    assert names(r.text)[:2] == ["suggestive", "gore"]
    assert names(client.get(f"/search?like={like}&decision=allow").text) == ["allowed"]
    assert names(client.get(f"/search?like={like}&policy=violence").text) == ["gore"]  # flagged by violence
    assert names(client.get(f"/search?like={like}&since=2999-01-01").text) == []
    assert names(client.get(f"/search?like={like}&until=2999-01-01").text)[:1] == ["suggestive"]
    assert client.get(f"/search?like={like}&since=yesterday").status_code == 422
    assert client.get("/search?like=999999").status_code == 404
    upload = {"file": ("x.png", b"not an image", "image/png")}
    assert client.post("/search", files=upload).status_code == 403  # no CSRF token
    r = client.post("/search", files=upload, data={"csrf_token": csrf})
    assert r.status_code == 422 and "the upload" in r.text

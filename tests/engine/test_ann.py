"""The approximate search index on disk (engine/ann.py) and embeddings.seq (migration 0010).

Known vectors, on SQLite and PostgreSQL: the index finds what exact search finds, sees rows
stored after it was built (delta, then a new segment), late commits below its watermark,
and is shared by a second SearchIndex (another process's view of the same folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from moderator.engine.ann import keys_of, max_seq, read_manifest, seq_of
from moderator.engine.search import SearchIndex
from moderator.settings import Settings
from moderator.store import Store
from moderator.store.engine import alembic_config
from moderator.store.tables import VECTOR_DTYPE
from tests.lifecycle import MODEL_ID, axis, seed, sha_of
from tests.store.conftest import empty_db_url, fresh_pg_url, pg_session_url, pg_user, store  # noqa: F401

D = 32


def ann_settings(tmp_path: Path, st: Store, **extra: object) -> Settings:
    """Settings that send every query through the index (no exact path), in a folder of this test."""
    url = st.url.render_as_string(hide_password=False)
    fields: dict[str, object] = {"database_url": url, "search_index_dir": tmp_path / "ix", "search_exact_below": 0}
    return Settings(**(fields | extra))  # type: ignore[arg-type]


def clustered(n: int, seed_: int = 0) -> np.ndarray:
    """Unit vectors in 12 clusters (closer to CLIP embeddings than uniform noise)."""
    rng = np.random.default_rng(seed_)
    centres = rng.normal(size=(12, D))
    v = centres[rng.integers(0, 12, n)] + 0.6 * rng.normal(size=(n, D))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_keys_name_the_row_and_the_frame() -> None:
    keys = keys_of(np.array([5, 9]), np.array([1, 3]))
    assert seq_of(keys).tolist() == [5, 9, 9, 9]
    assert (keys & 127).tolist() == [0, 0, 1, 2]


def test_seq_grows_with_each_insert_and_max_is_the_newest(store: Store) -> None:  # noqa: F811
    assert max_seq(store, MODEL_ID) == 0
    seed(store, {"a": axis(0, dim=D), "b": axis(1, dim=D)})
    store.save_embeddings({sha_of("a"): axis(0, dim=D)[None]}, MODEL_ID)  # already stored: no new row
    seed(store, {"c": axis(2, dim=D)})
    with store.engine.connect() as conn:
        seqs = {str(sha): int(seq) for sha, seq in conn.execute(text("SELECT sha256, seq FROM embeddings"))}
    assert max(seqs[sha_of("a")], seqs[sha_of("b")]) < seqs[sha_of("c")]  # in one batch: either order
    assert max_seq(store, MODEL_ID) == seqs[sha_of("c")] and max_seq(store, "another/model") == 0


def test_migration_numbers_the_embeddings_of_a_store_written_before_it(empty_db_url: str) -> None:  # noqa: F811
    if empty_db_url.startswith("sqlite:///"):
        Path(empty_db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(empty_db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), "0009")
        for i in range(3):
            conn.execute(
                text(
                    "INSERT INTO embeddings (sha256, model_id, dim, frames, vector, created_at)"
                    " VALUES (:s, :m, 2, 1, :v, :t)"
                ),
                {"s": f"{i:064x}", "m": MODEL_ID, "v": np.ones(2, VECTOR_DTYPE).tobytes(), "t": "2026-01-01 00:00:00"},
            )
    engine.dispose()
    store_ = Store(empty_db_url)  # migrates to head
    try:
        store_.save_embeddings({"f" * 64: np.ones((1, 2), np.float32)}, MODEL_ID)
        with store_.engine.connect() as conn:
            seqs = [s for _, s in conn.execute(text("SELECT sha256, seq FROM embeddings ORDER BY sha256")).all()]
        assert len(set(seqs)) == 4 and min(seqs) > 0 and seqs[-1] == max(seqs)  # "fff..." inserted last
    finally:
        store_.close()


def test_index_finds_what_exact_search_finds(store: Store, tmp_path: Path) -> None:  # noqa: F811
    vectors = clustered(3000)
    seed(store, {f"i{i}": v for i, v in enumerate(vectors)})
    exact = SearchIndex(store, MODEL_ID, ann_settings(tmp_path, store, search_exact_below=10**9))
    approx = SearchIndex(store, MODEL_ID, ann_settings(tmp_path, store))
    assert not exact.approximate() and approx.approximate() and approx.ann.exists
    queries = clustered(40, seed_=1)
    recall = []
    for q in queries:
        want = [h.sha256 for h in exact.search(q, 20)]
        got = approx.search(q, 20)
        recall.append(len(set(want) & {h.sha256 for h in got}) / 20)
        # Candidates are scored again exactly: the same scores as exact search.
        assert got[0].score == pytest.approx(exact.search(q, 1)[0].score, abs=1e-5)
    assert np.mean(recall) >= 0.95


def test_rows_stored_after_the_build_are_found_then_written_as_a_segment(store: Store, tmp_path: Path) -> None:  # noqa: F811
    seed(store, {f"i{i}": v for i, v in enumerate(clustered(500))})
    settings = ann_settings(tmp_path, store, search_delta_max=100)
    index = SearchIndex(store, MODEL_ID, settings)
    index.reindex()
    before = read_manifest(index.ann.folder)
    assert before is not None and len(before["segments"]) == 1
    new = axis(3, dim=D)
    seed(store, {"new": new, "anim": np.stack([axis(5, dim=D), axis(4, dim=D)])})
    hits = index.search(new, 1)
    assert [h.uris for h in hits] == [["new"]] and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.uris for h in index.search(axis(4, dim=D), 1)] == [["anim"]]  # its best frame
    assert read_manifest(index.ann.folder) == before  # from the delta: nothing written yet
    seed(store, {f"more{i}": v for i, v in enumerate(clustered(150, seed_=2))})
    index.search(new, 1)  # the delta is past 100: a thread writes a segment
    index.ann.wait_extended()
    after = read_manifest(index.ann.folder)
    assert after is not None and after["watermark"] == max_seq(store, MODEL_ID)
    other = SearchIndex(store, MODEL_ID, settings)  # another process: reads the same files
    assert [h.uris for h in other.search(new, 1)] == [["new"]]
    assert len(other.ann.delta.keys) == 0
    assert [h.uris for h in index.search(axis(4, dim=D), 1)] == [["anim"]]


def test_a_late_commit_below_the_watermark_joins_the_next_segment(store: Store, tmp_path: Path) -> None:  # noqa: F811
    seed(store, {f"i{i}": v for i, v in enumerate(clustered(200))})
    with store.engine.begin() as conn:  # a gap, as PostgreSQL leaves them (conflicts, rollbacks)
        gap = conn.execute(text("SELECT min(seq) + 10 FROM embeddings")).scalar()
        conn.execute(text("DELETE FROM embeddings WHERE seq = :g"), {"g": gap})
    settings = ann_settings(tmp_path, store, search_delta_max=100)
    index = SearchIndex(store, MODEL_ID, settings)
    index.reindex()
    # A row numbered below the watermark but committed after the build (PostgreSQL: a slow writer).
    seed(store, {"late": axis(6, dim=D)})
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE embeddings SET seq = :g WHERE sha256 = :s"), {"g": gap, "s": sha_of("late")})
    assert "late" not in {u for h in index.search(axis(6, dim=D), 3) for u in h.uris}  # max(seq) did not move
    seed(store, {f"more{i}": v for i, v in enumerate(clustered(150, seed_=3))})
    index.search(axis(6, dim=D), 1)
    index.ann.wait_extended()
    fresh = SearchIndex(store, MODEL_ID, settings)
    assert [h.uris for h in fresh.search(axis(6, dim=D), 1)] == [["late"]]
    assert len(fresh.ann.delta.keys) == 0


def test_orphan_embeddings_are_not_hits_and_a_reset_store_rebuilds(store: Store, tmp_path: Path) -> None:  # noqa: F811
    seed(store, {f"i{i}": v for i, v in enumerate(clustered(100))})
    store.save_embeddings({"f" * 64: axis(7, dim=D)[None]}, MODEL_ID)  # no item: an eval image, say
    index = SearchIndex(store, MODEL_ID, ann_settings(tmp_path, store))
    assert "f" * 64 not in {h.sha256 for h in index.search(axis(7, dim=D), 5)}
    with pytest.raises(ValueError, match="another model"):
        index.search(np.ones(3), 1)


def test_a_segment_as_large_as_half_the_one_before_joins_it(store: Store, tmp_path: Path) -> None:  # noqa: F811
    seed(store, {f"i{i}": v for i, v in enumerate(clustered(100))})
    settings = ann_settings(tmp_path, store, search_delta_max=100)
    index = SearchIndex(store, MODEL_ID, settings)
    index.reindex()
    seed(store, {f"more{i}": v for i, v in enumerate(clustered(150, seed_=4))} | {"new": axis(2, dim=D)})
    index.search(axis(2, dim=D), 1)
    index.ann.wait_extended()
    manifest = read_manifest(index.ann.folder)
    assert manifest is not None and [s["frames"] for s in manifest["segments"]] == [251]
    assert len(list(index.ann.folder.glob("seg-*.usearch"))) == 1  # the replaced files are gone
    assert [h.uris for h in SearchIndex(store, MODEL_ID, settings).search(axis(2, dim=D), 1)] == [["new"]]


def test_usearch_then_onnxruntime_load_in_one_process() -> None:
    # usearch 2.26 made a later `import onnxruntime` segfault (pyproject pins below it).
    import subprocess
    import sys

    code = "import usearch.index, onnxruntime; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-500:])


def test_cli_reindex_builds_the_index_then_searches_through_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from moderator.cli import app

    url = f"sqlite:///{tmp_path / 'store.db'}"
    st = Store(url)
    seed(st, {f"i{i}": v for i, v in enumerate(clustered(300, seed_=5))})
    st.close()
    env = {"MODERATOR_SEARCH_INDEX_DIR": str(tmp_path / "ix"), "MODERATOR_MODEL": "test-tiny"}
    flags = ["--database-url", url, "--pretrained", "none", "--device", "cpu"]
    r = CliRunner().invoke(app, ["search", "--reindex", *flags], env=env)
    assert r.exit_code == 0, r.output
    assert "300 embeddings" in r.output and list((tmp_path / "ix").glob("*/seg-*.usearch"))
    assert CliRunner().invoke(app, ["search", *flags], env=env).exit_code != 0  # nothing to look for

"""The export's one pass over the store (store.export.iter_export_chunks), on both backends:
one row per item in chunks, and columns that grow when a later result names a new class."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from moderator.cli.export import write_parquet, write_rows
from moderator.store import ExportFilters, ItemRecord, Store
from moderator.store import export as store_export
from moderator.store.results import encode_result, upsert_results
from moderator.types import Action, FiredClass, ItemStatus, PolicyResult


def stored(store: Store, uri: str, version: str, scores: dict[str, float], fired: tuple[FiredClass, ...] = ()) -> None:
    store.save_items([ItemRecord(uri=uri, sha256=uri.rjust(64, "0"), size=1, fingerprint=None, status=ItemStatus.OK)])
    result = PolicyResult(
        "p",
        version,
        "clip",
        "m",
        scores,
        fired,
        max((f.action for f in fired), default=Action.ALLOW, key=lambda a: a.severity),
    )
    with store.session() as s:
        conn = s.connection()
        (item_id,) = conn.exec_driver_sql(f"SELECT id FROM items WHERE uri = '{uri}'").one()
        upsert_results(conn, [(item_id, "p", version, "clip", "m", *encode_result(result))])


@pytest.mark.parametrize("chunk", [1, 1000])
def test_a_class_only_a_later_version_has_gets_its_column(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(store_export, "EXPORT_CHUNK", chunk)
    stored(store, "a", "v1", {"x": 0.1, "y": 0.2})
    stored(store, "b", "v2", {"x": 0.5, "y": 0.25, "z": 0.75}, (FiredClass("z", Action.REVIEW, 0.75, 0.5, "e"),))
    stored(store, "c", "v1", {"x": 0.125, "y": 0.0})
    path = tmp_path / "out.parquet"
    assert write_parquet(store, ExportFilters(), path) == 3
    table = pq.read_table(path).to_pydict()
    assert table["uri"] == ["a", "b", "c"]
    assert table["score.p.z"] == [None, 0.75, None] and table["score.p.x"] == [0.1, 0.5, 0.125]
    assert table["version.p"] == ["v1", "v2", "v1"] and table["flags"] == [[], ["p/z"], []]
    stream = io.StringIO()
    assert write_rows(store, ExportFilters(), "jsonl", stream) == 3
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["scores"] for r in rows] == [
        {"p": {"x": 0.1, "y": 0.2}},
        {"p": {"x": 0.5, "y": 0.25, "z": 0.75}},
        {"p": {"x": 0.125, "y": 0.0}},
    ]
    assert rows[1]["fired"] == [
        {"policy": "p", "name": "z", "action": "review", "score": 0.75, "threshold": 0.5, "evidence": "e"}
    ]


def test_an_empty_store_exports_an_empty_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    assert write_parquet(store, ExportFilters(), path) == 0
    assert pq.read_table(path).num_rows == 0


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_each_chunk_reads_the_results_of_its_own_items_only(dialect: str) -> None:
    """Every policy's results are joined within the chunk's range of item ids: PostgreSQL merge-joins
    them in item order and, told only `items.id > after`, read each policy's results from the first
    item for every chunk (1M items: 1.4 s per chunk of 10k at the middle of the store, 0.15 s bounded)."""
    import re

    from sqlalchemy.dialects import postgresql, sqlite

    classes = {"nsfw": ["explicit"], "tags": ["cat"], "violence": ["gore"]}
    query = store_export._wide_query(ExportFilters(), dialect, classes, 500_000, 10_000)
    target = postgresql.dialect() if dialect == "postgresql" else sqlite.dialect()
    sql = str(query.compile(dialect=target, compile_kwargs={"literal_binds": True}))
    joins = re.findall(r"LEFT OUTER JOIN results AS (\w+) ON (.*?)(?= LEFT OUTER JOIN| WHERE)", sql)
    assert [alias for alias, _ in joins] == ["results_1", "results_2", "results_3"]
    for alias, condition in joins:
        assert f"{alias}.item_id > 500000" in condition, condition

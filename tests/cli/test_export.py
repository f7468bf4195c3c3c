"""`moderator export`: JSONL, CSV and typed Parquet, with filters; rows match what was stored."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from moderator.cli import app
from moderator.pipeline import Pipeline
from moderator.settings import Settings
from moderator.store import ExportRow, Store
from tests.conftest import CLIP_POLICIES

runner = CliRunner()


@pytest.fixture
def scanned(tiny_settings: Settings, store: Store, photo_dir: Path) -> Settings:
    (photo_dir / "broken.jpg").write_bytes(b"not an image")
    Pipeline(tiny_settings, store).scan_targets([str(photo_dir)])
    return tiny_settings


def export(settings: Settings, *args: str) -> str:
    result = runner.invoke(app, ["export", "--database-url", settings.database_url, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def jsonl(settings: Settings, *args: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in export(settings, "--format", "jsonl", *args).splitlines()]


def test_jsonl_and_csv_hold_every_item(scanned: Settings) -> None:
    rows = jsonl(scanned)
    assert len(rows) == 7
    broken = next(r for r in rows if str(r["uri"]).endswith("broken.jpg"))
    assert broken["status"] == "error" and broken["error"] and broken["decision"] is None
    table = list(csv.DictReader(io.StringIO(export(scanned, "--format", "csv"))))
    assert [r["uri"] for r in table] == [r["uri"] for r in rows]
    assert json.loads(table[0]["scores"]) == rows[0]["scores"]


def test_parquet_has_typed_columns_matching_the_store(scanned: Settings, tmp_path: Path) -> None:
    out = tmp_path / "items.parquet"
    export(scanned, "--format", "parquet", "--out", str(out))
    table = pq.read_table(out)
    schema = table.schema
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    score_columns = [n for n in schema.names if n.startswith("score.")]
    assert {n.split(".")[1] for n in score_columns} == {"nsfw", "tags"}
    assert all(schema.field(n).type == pa.float64() for n in score_columns)

    by_uri = {r["uri"]: r for r in jsonl(scanned)}
    assert table.num_rows == len(by_uri)
    for record in table.to_pylist():
        expected = by_uri[record["uri"]]
        assert record["tags"] == expected["tags"] and record["status"] == expected["status"]
        for policy, scores in expected["scores"].items():  # type: ignore[attr-defined]
            assert record[f"version.{policy}"] == expected["policy_versions"][policy]  # type: ignore[index]
            for name, score in scores.items():
                assert record[f"score.{policy}.{name}"] == score
        if expected["status"] == "error":
            assert all(record[n] is None for n in score_columns)


def test_filters_select_matching_items(scanned: Settings, photo_dir: Path) -> None:
    rows = jsonl(scanned)
    tag = next(t for r in rows for t in r["tags"])  # type: ignore[attr-defined]
    tagged = jsonl(scanned, "--tag", tag)
    assert tagged and all(tag in r["tags"] for r in tagged)  # type: ignore[operator]
    assert len(tagged) == sum(tag in r["tags"] for r in rows)  # type: ignore[operator]

    decision = next(str(r["decision"]) for r in rows if r["decision"])
    assert {r["decision"] for r in jsonl(scanned, "--decision", decision)} == {decision}
    assert len(jsonl(scanned, "--status", "error")) == 1
    assert len(jsonl(scanned, "--prefix", str((photo_dir / "nested").resolve()))) == 2
    assert len(jsonl(scanned, "--policy", "nsfw")) == 6  # the broken file has no result
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds").replace("+00:00", "")
    assert jsonl(scanned, "--since", later) == []
    assert len(jsonl(scanned, "--until", later)) == 7


def test_parquet_needs_a_file_and_formats_are_checked(scanned: Settings) -> None:
    for args, says in (
        (["--format", "parquet"], "--out"),
        (["--format", "xml"], "parquet"),
        (["--decision", "maybe"], "--decision"),
    ):
        result = runner.invoke(app, ["export", "--database-url", scanned.database_url, *args])
        assert result.exit_code == 2 and says in result.output


def test_reading_a_store_that_does_not_exist_is_refused_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "store.db"
    for command in (["export"], ["jobs"]):
        result = runner.invoke(app, [*command, "--database-url", f"sqlite:///{missing}"])
        assert result.exit_code == 2, (command, result.output)
        assert f"no store at {missing}" in result.stderr and "moderator scan" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not missing.parent.exists()


def test_a_scan_creates_the_store_and_says_where_then_export_reads_it(tmp_path: Path, photo_dir: Path) -> None:
    db = tmp_path / "fresh" / "store.db"
    settings = Settings(database_url=f"sqlite:///{db}")
    args = ["--model", "test-tiny", "--pretrained", "none", "--device", "cpu", "--policy", str(CLIP_POLICIES[1])]
    result = runner.invoke(app, ["scan", str(photo_dir), "--database-url", settings.database_url, *args, "--json"])
    assert result.exit_code == 0, result.output
    assert f"store: {db}" in result.stderr
    assert json.loads(result.stdout)["scanned"] == 6
    assert len(jsonl(settings)) == 6


@pytest.fixture
def statements() -> Iterator[list[str]]:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def item_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if "FROM items" in s]


@pytest.mark.parametrize("format", ["jsonl", "csv", "parquet"])
def test_export_reads_each_item_once_a_chunk_at_a_time(
    scanned: Settings, tmp_path: Path, statements: list[str], monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    from moderator.store import export as store_export

    target = ["--out", str(tmp_path / f"items.{format}")] if format == "parquet" else []
    statements.clear()
    whole = export(scanned, "--format", format, *target)
    assert len(item_reads(statements)) == 1  # one pass: 7 items, one chunk
    monkeypatch.setattr(store_export, "EXPORT_CHUNK", 3)
    statements.clear()
    again = export(scanned, "--format", format, *target)
    reads = item_reads(statements)
    assert len(reads) == 3 and all("LIMIT" in s for s in reads)  # 3 + 3 + 1 items, each read once
    assert again == whole


def test_jsonl_rows_are_the_stores_export_rows(scanned: Settings, store: Store) -> None:
    """The one-pass columns give what Store.iter_export (one ExportRow per item) gives."""

    def as_json(row: object) -> dict[str, object]:
        data = {k: getattr(row, k) for k in row.__dataclass_fields__}  # type: ignore[attr-defined]
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
            elif hasattr(value, "value"):
                data[key] = value.value
        return json.loads(json.dumps(data, sort_keys=True))  # type: ignore[no-any-return]

    expected = [as_json(r) for r in store.iter_export()]
    assert any(r["tags"] for r in expected) and any(r["flags"] or r["fired"] for r in expected)
    assert jsonl(scanned) == expected
    table = list(csv.DictReader(io.StringIO(export(scanned, "--format", "csv"))))
    assert list(table[0]) == list(ExportRow.__dataclass_fields__)  # the columns, in ExportRow's order
    assert [r["uri"] for r in table] == [r["uri"] for r in expected]

"""`moderator export`: stored results as JSONL, CSV or Parquet, one row per item."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from pydantic import ValidationError

from moderator.cli.common import DatabaseOpt, console, fail, make_settings, open_store

FORMATS = ("jsonl", "csv", "parquet")
PARQUET_CHUNK = 5000  # rows per Parquet row group written: memory stays flat however many items


def export(
    format: Annotated[str, typer.Option("--format", "-f", help="jsonl, csv or parquet.")] = "jsonl",
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: standard output; parquet needs a file).")
    ] = None,
    decision: Annotated[str | None, typer.Option(help="Only this decision: allow, tag, review, block.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status: ok, error, skipped, deleted.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only items carrying this tag.")] = None,
    policy: Annotated[str | None, typer.Option(help="Only items with a result of this policy.")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Only items whose uri starts with this (a folder, ARCHIVE#, s3://bucket/...).")
    ] = None,
    since: Annotated[datetime | None, typer.Option(help="Only items updated at or after this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Only items updated before this time (ISO 8601).")] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Export one row per item: uri, sha256, status, error, decision, tags, flags, per-policy scores and versions.

    JSONL and CSV carry scores as {policy: {class: score}} (JSON text in CSV). Parquet
    has typed columns for pandas or DuckDB: tags and flags as list<string>, one float64
    column `score.POLICY.CLASS` per class, `version.POLICY`, `action.POLICY` and
    `model.POLICY` strings, `updated_at` a UTC timestamp, and meta as JSON text.
    """
    from moderator.store import ExportFilters

    if format not in FORMATS:
        fail(f"unknown format {format!r}: use {', '.join(FORMATS)}")
    if format == "parquet" and out_path is None:
        fail("parquet is binary: give --out FILE")
    try:
        filters = ExportFilters(
            decision=decision,
            status=status,
            tag=tag,
            policy=policy,
            uri_prefix=prefix,
            updated_since=since,
            updated_until=until,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"--{'.'.join(map(str, first['loc'])).replace('_', '-')}: {first['msg']}")
    store = open_store(make_settings(database_url=database_url))
    if format == "parquet":
        assert out_path is not None
        n = write_parquet(lambda: store.iter_export(filters), out_path)
    else:
        target = open(out_path, "w", newline="", encoding="utf-8") if out_path else nullcontext(sys.stdout)  # noqa: SIM115
        with target as stream:
            n = write_rows(store.iter_export(filters), format, stream)
    console.print(f"exported {n} item(s)" + (f" to {out_path}" if out_path else ""), highlight=False)


def row_dict(row: Any) -> dict[str, Any]:
    data = {k: getattr(row, k) for k in row.__dataclass_fields__}
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
        elif hasattr(value, "value"):
            data[key] = value.value
    return data


def write_rows(rows: Any, format: str, stream: IO[str]) -> int:
    n = 0
    writer: csv.DictWriter[str] | None = None
    for row in rows:
        data = row_dict(row)
        if format == "jsonl":
            stream.write(json.dumps(data, sort_keys=True) + "\n")
        else:
            flat = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v for k, v in data.items()}
            if writer is None:
                writer = csv.DictWriter(stream, fieldnames=list(flat))
                writer.writeheader()
            writer.writerow(flat)
        n += 1
    return n


# -- parquet ---------------------------------------------------------------------------------


def score_classes(rows: Iterable[Any]) -> dict[str, list[str]]:
    """policy -> sorted class names over every row: the score columns."""
    found: dict[str, set[str]] = {}
    for row in rows:
        for policy, scores in row.scores.items():
            found.setdefault(policy, set()).update(scores)
    return {policy: sorted(classes) for policy, classes in sorted(found.items())}


def parquet_schema(classes: dict[str, list[str]]) -> Any:
    import pyarrow as pa

    fields = [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("decision", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("flags", pa.list_(pa.string())),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("meta", pa.string()),
        # issue 14: what fired (JSON) and the human verdict (the latest review) beside the pipeline's decision
        pa.field("fired", pa.string()),
        pa.field("current_decision", pa.string()),
        pa.field("review_verdict", pa.string()),
        pa.field("review_decision", pa.string()),
        pa.field("reviewer", pa.string()),
        pa.field("reviewed_at", pa.timestamp("us", tz="UTC")),
        pa.field("review_labels", pa.list_(pa.string())),
    ]
    for policy, names in classes.items():
        fields += [pa.field(f"{what}.{policy}", pa.string()) for what in ("version", "action", "model")]
        fields += [pa.field(f"score.{policy}.{name}", pa.float64()) for name in names]
    return pa.schema(fields)


def parquet_record(row: Any, classes: dict[str, list[str]]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "uri": row.uri,
        "sha256": row.sha256,
        "size": row.size,
        "status": _text(row.status),
        "error": row.error,
        "decision": _text(row.decision),
        "tags": list(row.tags),
        "flags": list(row.flags),
        "updated_at": row.updated_at,
        "meta": json.dumps(row.meta, sort_keys=True, default=str),
        "fired": json.dumps(row.fired, sort_keys=True, default=str),
        "current_decision": row.current_decision,
        "review_verdict": row.review_verdict,
        "review_decision": row.review_decision,
        "reviewer": row.reviewer,
        "reviewed_at": row.reviewed_at,
        "review_labels": list(row.review_labels),
    }
    for policy, names in classes.items():
        record[f"version.{policy}"] = row.policy_versions.get(policy)
        record[f"action.{policy}"] = _text(row.actions.get(policy))
        record[f"model.{policy}"] = row.model_ids.get(policy)
        scores = row.scores.get(policy, {})
        for name in names:
            record[f"score.{policy}.{name}"] = scores.get(name)
    return record


def _text(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def write_parquet(rows: Callable[[], Iterator[Any]], path: Path) -> int:
    """Two streaming passes over `rows()`: the score columns first, then the rows in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    classes = score_classes(rows())
    schema = parquet_schema(classes)
    n = 0
    chunk: list[dict[str, Any]] = []
    with pq.ParquetWriter(path, schema) as writer:
        for row in rows():
            chunk.append(parquet_record(row, classes))
            if len(chunk) == PARQUET_CHUNK:
                writer.write_table(pa.Table.from_pylist(chunk, schema))
                n, chunk = n + len(chunk), []
        if chunk or n == 0:
            writer.write_table(pa.Table.from_pylist(chunk, schema))
            n += len(chunk)
    return n

"""`moderator export`: stored results as JSONL, CSV or Parquet, one row per item, in one pass
over the store a chunk of items at a time (store.export.iter_export_chunks): memory is one
chunk's, a Parquet row group per chunk."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from pydantic import ValidationError

from moderator.cli.common import DatabaseOpt, console, fail, make_settings, open_store

FORMATS = ("jsonl", "csv", "parquet")


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
        n = write_parquet(store, filters, out_path)
    else:
        target = open(out_path, "w", newline="", encoding="utf-8") if out_path else nullcontext(sys.stdout)  # noqa: SIM115
        with target as stream:
            n = write_rows(store, filters, format, stream)
    console.print(f"exported {n} item(s)" + (f" to {out_path}" if out_path else ""), highlight=False)


# The fields of store.ExportRow, in order: the keys of a JSONL row and the columns of the CSV.
FIELDS = (
    "uri", "sha256", "size", "status", "error", "decision", "tags", "flags", "scores", "policy_versions",
    "model_ids", "actions", "meta", "updated_at", "fired", "current_decision", "review_verdict",
    "review_decision", "reviewer", "reviewed_at", "review_labels",
)  # fmt: skip
_PLAIN = ("uri", "sha256", "size", "status", "error", "decision", "tags", "flags", "current_decision")
_REVIEW = ("review_verdict", "review_decision", "reviewer", "review_labels")


def chunks(store: Any, filters: Any) -> Iterator[tuple[dict[str, list[str]], dict[str, Any]]]:
    """(score classes, flat columns) per chunk of items: one pass (store.export.iter_export_chunks).
    Only when a result names a class no column was made for does it start again, with it."""
    from moderator.store import export as chunked

    with store.session() as s:
        classes = chunked.score_classes(s)
    while True:
        try:
            for columns in chunked.iter_export_chunks(store.session, filters, classes, size=chunked.EXPORT_CHUNK):
                yield classes, columns
            return
        except chunked.ColumnsGrew as grew:
            classes = grew.classes
            yield classes, {}  # the writer starts again


def records(classes: dict[str, list[str]], columns: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of one chunk as JSONL writes them (ExportRow's fields)."""
    n = len(columns["uri"])
    per_policy = [
        (
            p,
            *(columns[f"{what}.{p}"] for what in ("version", "model", "action")),
            [(c, columns[f"score.{p}.{c}"].to_pylist()) for c in names],
        )
        for p, names in classes.items()
    ]
    plain = [(k, columns[k]) for k in _PLAIN]
    review = [(k, columns[k]) for k in _REVIEW]
    meta, fired, updated, reviewed = columns["meta"], columns["fired"], columns["updated_at"], columns["reviewed_at"]
    for i in range(n):
        row = {k: v[i] for k, v in plain}
        scores, versions, models, actions = {}, {}, {}, {}
        for policy, version, model, action, by_class in per_policy:
            if version[i] is None:
                continue
            versions[policy], models[policy], actions[policy] = version[i], model[i], action[i]
            scores[policy] = {c: v[i] for c, v in by_class if v[i] is not None}
        row.update(scores=scores, policy_versions=versions, model_ids=models, actions=actions)
        row["meta"] = json.loads(meta[i]) if meta[i] != "{}" else {}
        row["fired"] = json.loads(fired[i]) if fired[i] != "[]" else []
        row["updated_at"] = updated[i].isoformat()
        row["reviewed_at"] = reviewed[i].isoformat() if reviewed[i] is not None else None
        row.update((k, v[i]) for k, v in review)
        yield row


def write_rows(store: Any, filters: Any, format: str, stream: IO[str]) -> int:
    """JSONL or CSV in one pass over the store; a restart (ColumnsGrew) rewinds the stream when
    it can, else the rows written stay and the run fails."""
    n = 0
    start = stream.tell() if stream.seekable() else None
    writer: csv.DictWriter[str] | None = None
    encode = json.JSONEncoder(sort_keys=True).encode
    for classes, columns in chunks(store, filters):
        if not columns:
            if start is None:
                raise RuntimeError("the score columns grew during the export: run it again")
            stream.seek(start)
            stream.truncate()
            n, writer = 0, None
            continue
        if format == "jsonl":
            stream.write("".join(encode(data) + "\n" for data in records(classes, columns)))
        else:
            if writer is None:
                writer = csv.DictWriter(stream, fieldnames=list(FIELDS))
                writer.writeheader()
            writer.writerows(
                {k: encode(v) if isinstance(v, dict | list) else v for k, v in data.items()}
                for data in records(classes, columns)
            )
        n += len(columns["uri"])
    return n


# -- parquet ---------------------------------------------------------------------------------


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


def write_parquet(store: Any, filters: Any, path: Path) -> int:
    """One pass over the store: a record batch per chunk of items, written as a row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    writer: Any = None
    schema: Any = None
    try:
        for classes, columns in chunks(store, filters):
            if writer is None or not columns:  # the first chunk, or a restart with more columns
                if writer is not None:
                    writer.close()
                schema = parquet_schema(classes)
                writer, n = pq.ParquetWriter(path, schema), 0
                if not columns:
                    continue
            writer.write_batch(pa.RecordBatch.from_pydict(columns, schema))
            n += len(columns["uri"])
        if writer is None:  # no item: an empty file with the columns there are
            with store.session() as s:
                from moderator.store.export import score_classes

                schema = parquet_schema(score_classes(s))
            writer = pq.ParquetWriter(path, schema)
            writer.write_table(schema.empty_table())
    finally:
        if writer is not None:
            writer.close()
    return n

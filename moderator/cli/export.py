"""`moderator export`: stored results as JSONL or CSV, one row per item."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from moderator.cli.common import DatabaseOpt, console, fail, make_settings, open_store


def export(
    format: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: standard output).")] = None,
    decision: Annotated[str | None, typer.Option(help="Only items with this decision (allow, tag, review, block).")] = None,
    tag: Annotated[str | None, typer.Option(help="Only items carrying this tag.")] = None,
    policy: Annotated[str | None, typer.Option(help="Only items with a result of this policy.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Only items whose uri starts with this.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only items updated at or after this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Only items updated before this time (ISO 8601).")] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Export one row per item: uri, sha256, status, error, decision, tags, flags, per-policy scores and versions."""
    from moderator.store import ExportFilters

    if format not in ("jsonl", "csv"):
        fail(f"unknown format {format!r}: use jsonl or csv")
    try:
        filters = ExportFilters(
            decision=decision, tag=tag, policy=policy, uri_prefix=prefix, updated_since=since, updated_until=until
        )
    except ValueError as exc:
        fail(str(exc).splitlines()[-1] if str(exc) else "bad filter")
    store = open_store(make_settings(database_url=database_url))
    stream: IO[str] = open(out_path, "w", newline="", encoding="utf-8") if out_path else sys.stdout
    try:
        n = write_rows(store.iter_export(filters), format, stream)
    finally:
        if out_path:
            stream.close()
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

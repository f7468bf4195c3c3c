"""The indexed review queue at scale: first, filtered and deep pages, against the old query.

    python benchmarks/queue_index.py --items 100000 --database-url sqlite:////tmp/q.db [--old] [--json]

Fills N items in SQL (generate_series / a recursive CTE: seconds, not the scan's write path),
5% flagged (a third of them block), 2% of the flagged contents at two places, three results
per item (nsfw, violence, tags) in the stored JSON form; then builds the queue tables with
store/queue_index.rebuild (what migration 0009 and a policy-wide refresh run) and times
review.queries.queue in process, median of 5. `--old` also times the query of the release
before (read from git, commit OLD) on the same store: only sensible at 100k.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from moderator.review import queries
from moderator.store import Store
from moderator.store.queue_index import analyze, rebuild

OLD = "378fc4e"  # the last commit with the OFFSET queue over expanded JSON
REPO = Path(__file__).resolve().parents[1]


def _series(dialect: str, n: int) -> str:
    if dialect == "postgresql":
        return f"SELECT g AS i FROM generate_series(1, {n}) AS g"
    return f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT i FROM s"


def fill(store: Store, n: int) -> float:
    """N items and their results, in SQL; returns seconds."""
    started = time.perf_counter()
    pg = store.dialect == "postgresql"
    hexed = (
        "lpad(to_hex(CASE WHEN i % 1000 = 20 THEN i - 20 ELSE i END), 64, '0')"
        if pg
        else ("printf('%064x', CASE WHEN i % 1000 = 20 THEN i - 20 ELSE i END)")
    )
    decision = "CASE WHEN i % 60 = 0 THEN 'block' WHEN i % 20 = 0 THEN 'review' ELSE 'allow' END"
    uri = "CASE WHEN i % 3 = 0 THEN 's3://bucket/' ELSE '/data/' END || (i % 1000) || '/' || i || '.jpg'"
    now = "now()" if pg else "'2026-12-01 00:00:00.000000'"
    js = "CAST({} AS JSONB)" if pg else "{}"
    score = "((i * 7919) % 1000) / 1000.0"
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO items (id, uri, sha256, status, meta, decision, created_at, updated_at, event_seq) "
                f"SELECT i, {uri}, {hexed}, 'ok', {js.format(repr('{}'))}, {decision}, {now}, {now}, 0 "
                f"FROM ({_series(store.dialect, n)}) AS s"
            )
        )
        for policy, cls, fires in (
            ("nsfw", "explicit", "i % 20 = 0 AND i % 40 <> 0"),
            ("violence", "gore", "i % 40 = 0"),
        ):
            fired = (
                f'CASE WHEN {fires} THEN \'[{{"name": "{cls}", "action": "\' || {decision} || '
                f'\'", "score": \' || (0.3 + {score} * 0.7) || \', "threshold": 0.3, "evidence": "e"}}]\' '
                "ELSE '[]' END"
            )
            conn.execute(
                text(
                    "INSERT INTO results (item_id, policy, policy_version, scorer, model_id, action, scores, fired, "
                    f"tags, created_at) SELECT i, '{policy}', 'v1', 'clip', 'ViT-B-32', "
                    f"CASE WHEN {fires} THEN {decision} ELSE 'allow' END, {js.format(chr(39) + '{}' + chr(39))}, "
                    f"{js.format(fired)}, {js.format(repr('[]'))}, {now} FROM ({_series(store.dialect, n)}) AS s"
                )
            )
        tags = "CASE WHEN i % 7 = 0 THEN '[\"selfie\"]' WHEN i % 2 = 0 THEN '[\"outdoor\"]' ELSE '[]' END"
        conn.execute(
            text(
                "INSERT INTO results (item_id, policy, policy_version, scorer, model_id, action, scores, fired, "
                f"tags, created_at) SELECT i, 'tags', 'v1', 'clip', 'ViT-B-32', 'tag', {js.format(repr('{}'))}, "
                f"{js.format(repr('[]'))}, {js.format(tags)}, {now} FROM ({_series(store.dialect, n)}) AS s"
            )
        )
        for table in ("items", "results"):  # these tables only: a database-wide ANALYZE meets other schemas' locks
            conn.exec_driver_sql(f"ANALYZE {table}")
    return time.perf_counter() - started


def _ms(run: Any, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def _old_module() -> types.ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{OLD}:moderator/review/queries.py"], cwd=REPO, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("old_queries")
    sys.modules["old_queries"] = module  # dataclasses look their module up
    exec(compile(source, "old_queries.py", "exec"), module.__dict__)  # noqa: S102 - our own source, from git
    return module


def _deep_cursor(db: Session, fraction: float) -> str:
    total = int(db.scalar(text("SELECT COUNT(*) FROM queue_contents")) or 0)
    row = db.execute(
        text(
            "SELECT severity, top_score, item_id FROM queue_contents "
            "ORDER BY severity DESC, top_score DESC, item_id DESC LIMIT 1 OFFSET :o"
        ),
        {"o": int(total * fraction)},
    ).one()
    return f"{row[0]}_{float(row[1])!r}_{row[2]}"


CASES: dict[str, dict[str, Any]] = {
    "first": {},
    "policy": {"policy": "violence"},
    "class": {"class": "explicit"},
    "tag": {"tag": "selfie"},
    "source_common": {"source": "s3://bucket/"},
    "source_rare": {"source": "/data/40/"},  # 0.1% of the places
    "score": {"min_score": 0.5, "max_score": 0.6},
    "block": {"decision": "block"},
}


def measure(store: Store, old: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Session(store.engine) as db:
        for name, params in CASES.items():
            f = queries.QueueFilters.model_validate(params)
            out[f"queue_{name}_ms"] = _ms(lambda f=f: queries.queue(db, f))
        deep = queries.QueueFilters(after=_deep_cursor(db, 0.9))
        out["queue_deep_ms"] = _ms(lambda: queries.queue(db, deep))
        deep_tag = queries.QueueFilters(tag="outdoor", after=_deep_cursor(db, 0.9))
        out["queue_deep_tag_ms"] = _ms(lambda: queries.queue(db, deep_tag))
        out["queue_page_20_offset_ms"] = _ms(lambda: queries.queue(db, queries.QueueFilters(page=20)))
        out["queue_total"] = queries.queue(db, queries.QueueFilters()).total
        if old and (module := _old_module()) is not None:
            for name in ("first", "tag", "policy"):
                f = module.QueueFilters.model_validate(CASES[name])
                out[f"old_queue_{name}_ms"] = _ms(lambda f=f: module.queue(db, f), repeat=3)
            out["old_queue_deep_ms"] = _ms(lambda: module.queue(db, module.QueueFilters(page=900)), repeat=3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--database-url", required=True, help="an empty store (it is filled)")
    parser.add_argument("--old", action="store_true", help="also time the previous release's query")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    store = Store(args.database_url)
    report: dict[str, Any] = {"items": args.items, "dialect": store.dialect}
    report["fill_s"] = round(fill(store, args.items), 1)
    t = time.perf_counter()
    with store.engine.begin() as conn:
        rebuild(conn)
        analyze(conn)
    report["queue_rebuild_s"] = round(time.perf_counter() - t, 2)
    report.update(measure(store, args.old))
    store.close()
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))


if __name__ == "__main__":
    main()

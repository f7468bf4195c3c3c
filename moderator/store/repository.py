"""Store: the one door to the database for the pipeline, the CLI and the workers.

Writes are idempotent (upserts keyed by uri, (item, policy) and (sha256, model)),
so a rescan or a redelivered batch leaves one row each, and are made in few
round trips: one statement per table per batch, never a SELECT per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from moderator.store import jobs
from moderator.store.engine import create_store_engine
from moderator.store.export import iter_export
from moderator.store.migrate import upgrade
from moderator.store.records import ExportFilters, ExportRow, ItemRecord, JobInfo, KnownItem, StoreCounts
from moderator.store.tables import Embedding, Item, Job, JobState, Result, utcnow
from moderator.types import Action, ItemStatus, PolicyResult, most_severe

# Keys per IN (...) list: far below every backend's bound-parameter limit.
CHUNK = 500
# Stored vectors are little-endian float16 whatever the machine.
VECTOR_DTYPE = np.dtype("<f2")

T = TypeVar("T")


def _chunks(values: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    chunk: list[T] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


def _result_row(item_id: int, result: PolicyResult, now: Any) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "policy": result.policy,
        "policy_version": result.policy_version,
        "scorer": result.scorer,
        "model_id": result.model_id,
        "action": result.action,
        # float(): scorers hand over numpy scalars, which JSON cannot encode.
        "scores": {name: float(score) for name, score in result.scores.items()},
        "fired": [
            {
                "name": f.name,
                "action": f.action.value,
                "score": float(f.score),
                "threshold": float(f.threshold),
                "evidence": f.evidence,
            }
            for f in result.fired
        ],
        "tags": result.tags,
        "created_at": now,
    }


class Store:
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.engine = create_store_engine(url)
        self.url = self.engine.url
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            upgrade(self.engine)

    def __repr__(self) -> str:
        return f"Store({self.url.render_as_string(hide_password=True)!r})"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on an exception."""
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, model: type[Any]) -> Any:
        # Both dialects spell ON CONFLICT the same way (on_conflict_do_update / _nothing, .excluded).
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        if self.dialect not in ("postgresql", "sqlite"):
            raise NotImplementedError(f"the store supports SQLite and PostgreSQL, not {self.dialect}")
        return dialect.insert(_table(model))

    # -- items -----------------------------------------------------------------------

    def known_items(self, uris: Iterable[str]) -> dict[str, KnownItem]:
        """What is stored for these uris (unknown ones are left out)."""
        found: dict[str, KnownItem] = {}
        with self.session() as s:
            for chunk in _chunks(dict.fromkeys(uris)):
                stmt = (
                    select(
                        Item.uri,
                        Item.sha256,
                        Item.fingerprint,
                        Item.status,
                        Result.policy,
                        Result.policy_version,
                        Result.model_id,
                    )
                    .outerjoin(Result, Result.item_id == Item.id)
                    .where(Item.uri.in_(chunk))
                )
                for row in s.execute(stmt):
                    known = found.setdefault(row.uri, KnownItem(row.sha256, row.fingerprint, row.status, {}))
                    if row.policy is not None:
                        known.policy_versions[row.policy] = row.policy_version
                        known.policy_models[row.policy] = row.model_id
        return found

    def save_items(self, records: Sequence[ItemRecord]) -> None:
        """Upsert items by uri and their results by (item, policy), all in one transaction.

        Results of policies a record does not name are kept while the item's bytes are
        the same, and dropped when its sha256 changed (they judged other bytes). The
        item's decision is the most severe action over all its stored results. A uri
        given twice keeps its last record.
        """
        latest = {r.uri: r for r in records}
        if not latest:
            return
        now = utcnow()
        item_rows = [
            {
                "uri": r.uri,
                "sha256": r.sha256,
                "size": r.size,
                "fingerprint": r.fingerprint,
                "status": r.status,
                "error": r.error,
                "meta": r.meta,
                "decision": r.decision,
                "job_id": r.job_id,
                "created_at": now,
                "updated_at": now,
            }
            for r in latest.values()
        ]
        items = self._insert(Item)
        refreshed = ("sha256", "size", "fingerprint", "status", "error", "meta", "decision", "job_id", "updated_at")
        upsert_items = items.on_conflict_do_update(
            index_elements=["uri"], set_={c: items.excluded[c] for c in refreshed}
        ).returning(items.table.c.id, items.table.c.uri)
        results = self._insert(Result)
        replaced = ("policy_version", "scorer", "model_id", "action", "scores", "fired", "tags", "created_at")
        upsert_results = results.on_conflict_do_update(
            index_elements=["item_id", "policy"], set_={c: results.excluded[c] for c in replaced}
        )
        with self.session() as s:
            conn = s.connection()
            stored = conn.execute(select(Item.uri, Item.sha256).where(Item.uri.in_(list(latest))))
            before = {uri: sha for uri, sha in stored}
            ids = {row.uri: row.id for row in conn.execute(upsert_items, item_rows)}
            result_rows = [
                _result_row(ids[r.uri], result, now)
                for r in latest.values()
                for result in {res.policy: res for res in r.results}.values()
            ]
            if result_rows:
                conn.execute(upsert_results, result_rows)
            for uri, record in latest.items():
                if uri in before and before[uri] != record.sha256:
                    kept = [res.policy for res in record.results]
                    conn.execute(delete(Result).where(Result.item_id == ids[uri], Result.policy.not_in(kept)))
            self._refresh_decisions(conn, [ids[u] for u, r in latest.items() if r.status is ItemStatus.OK])

    @staticmethod
    def _refresh_decisions(conn: Any, item_ids: list[int]) -> None:
        """Item decision = most severe action over all its stored results (not only this scan's)."""
        if not item_ids:
            return
        actions: dict[int, list[Action]] = {i: [] for i in item_ids}
        for item_id, action in conn.execute(select(Result.item_id, Result.action).where(Result.item_id.in_(item_ids))):
            actions[item_id].append(Action(action))
        rows = [{"b_id": i, "b_decision": most_severe(a)} for i, a in actions.items()]
        stmt = (
            update(_table(Item)).where(_table(Item).c.id == bindparam("b_id")).values(decision=bindparam("b_decision"))
        )
        conn.execute(stmt, rows)

    def mark_deleted(self, uri: str, *, job_id: str | None = None) -> bool:
        """Record that the source object is gone (results are kept); False if the uri is unknown."""
        values: dict[str, Any] = {"status": ItemStatus.DELETED, "error": None, "updated_at": utcnow()}
        if job_id is not None:
            values["job_id"] = job_id
        with self.session() as s:
            stmt = update(Item).where(Item.uri == uri).values(**values).execution_options(synchronize_session=False)
            return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def iter_export(self, filters: ExportFilters | None = None, *, batch: int = 1000) -> Iterator[ExportRow]:
        """Stream one ExportRow per matching item, in insertion order."""
        with self.session() as s:
            yield from iter_export(s, filters or ExportFilters(), batch)

    # -- embeddings ------------------------------------------------------------------

    def load_embeddings(self, sha256s: Iterable[str], model_id: str) -> dict[str, np.ndarray]:
        """Stored embeddings of this model: sha256 -> read-only float16 [frames, dim]."""
        found: dict[str, np.ndarray] = {}
        with self.session() as s:
            for chunk in _chunks(dict.fromkeys(sha256s)):
                stmt = select(Embedding.sha256, Embedding.frames, Embedding.dim, Embedding.vector).where(
                    Embedding.model_id == model_id, Embedding.sha256.in_(chunk)
                )
                for row in s.execute(stmt):
                    vector = np.frombuffer(row.vector, dtype=VECTOR_DTYPE).reshape(row.frames, row.dim)
                    found[row.sha256] = vector.astype(np.float16, copy=False)
        return found

    def save_embeddings(self, embeddings: dict[str, np.ndarray], model_id: str) -> None:
        """Store [frames, dim] (or [dim]) arrays as float16; ones already stored are left as they are."""
        if not embeddings:
            return
        now = utcnow()
        rows = []
        for sha, array in embeddings.items():
            vector = np.atleast_2d(np.asarray(array)).astype(VECTOR_DTYPE)
            if vector.ndim != 2:
                raise ValueError(f"embedding of {sha} has shape {np.shape(array)}; expected [frames, dim]")
            frames, dim = vector.shape
            rows.append(
                {
                    "sha256": sha,
                    "model_id": model_id,
                    "frames": frames,
                    "dim": dim,
                    "vector": vector.tobytes(),
                    "created_at": now,
                }
            )
        stmt = self._insert(Embedding).on_conflict_do_nothing(index_elements=["sha256", "model_id"])
        with self.session() as s:
            s.connection().execute(stmt, rows)

    # -- jobs --------------------------------------------------------------------------

    def create_job(self, targets: Sequence[str], policies: Sequence[str], total: int | None = None) -> str:
        with self.session() as s:
            return jobs.create_job(s, targets, policies, total)

    def update_job(
        self,
        job_id: str,
        *,
        state: JobState | None = None,
        total: int | None = None,
        done: int | None = None,
        errors: int | None = None,
        skipped: int | None = None,
        message: str | None = None,
    ) -> None:
        """Set the fields given (None leaves one as it is); KeyError for an unknown job."""
        with self.session() as s:
            jobs.update_job(
                s, job_id, state=state, total=total, done=done, errors=errors, skipped=skipped, message=message
            )

    def advance_job(self, job_id: str, *, done: int = 0, errors: int = 0, skipped: int = 0) -> JobInfo | None:
        """Add counts and move the state on (see jobs.advance_job); the job as it is now, None if unknown."""
        with self.session() as s:
            try:
                jobs.advance_job(s, job_id, done=done, errors=errors, skipped=skipped)
            except KeyError:
                return None
            return jobs.get_job(s, job_id)

    def get_job(self, job_id: str) -> JobInfo | None:
        with self.session() as s:
            return jobs.get_job(s, job_id)

    def list_jobs(self, limit: int = 20) -> list[JobInfo]:
        with self.session() as s:
            return jobs.list_jobs(s, limit)

    # -- summaries ---------------------------------------------------------------------

    def counts(self) -> StoreCounts:
        with self.session() as s:

            def total(model: type[Any]) -> int:
                return int(s.scalar(select(func.count()).select_from(model)) or 0)

            by_status = s.execute(select(Item.status, func.count()).group_by(Item.status))
            by_decision = s.execute(
                select(Item.decision, func.count()).where(Item.decision.is_not(None)).group_by(Item.decision)
            )
            return StoreCounts(
                items=total(Item),
                results=total(Result),
                embeddings=total(Embedding),
                jobs=total(Job),
                by_status={str(status): n for status, n in by_status},
                by_decision={str(decision): n for decision, n in by_decision},
            )

    # -- fingerprints --------------------------------------------------------------------

    def update_fingerprints(self, mapping: dict[str, str]) -> None:
        """Set the stored fingerprint of these uris (touched files whose bytes did not change).

        One executemany statement per call; unknown uris are ignored.
        """
        if not mapping:
            return
        table = _table(Item)
        stmt = update(table).where(table.c.uri == bindparam("b_uri")).values(fingerprint=bindparam("b_fingerprint"))
        with self.session() as s:
            s.connection().execute(stmt, [{"b_uri": u, "b_fingerprint": f} for u, f in mapping.items()])

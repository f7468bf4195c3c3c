"""Whole-store reads and writes for re-scoring, policy diffs and search.

These touch every stored item, so they avoid per-row work: plain DBAPI rows (no
ORM objects, no per-row type processing), embeddings back in one query as one
float16 matrix (the blobs joined, then one np.frombuffer), re-scored results
written through the same upsert and decision refresh as Store.save_items
(store/results.py): one executemany, one UPDATE.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from moderator.decide import PolicyMeta
from moderator.store.engine import chunks, driver_sql
from moderator.store.repository import Store
from moderator.store.results import EncodedResult, refresh_decisions, severity_sql, upsert_results
from moderator.store.tables import VECTOR_DTYPE, Embedding, Item, Result
from moderator.types import Action, FiredClass, ItemStatus, PolicyResult


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: bulk work allocates ~10^5 small containers, each
    allocation burst triggering a collection that walks all of them (measured: ~40% of a
    100k-item rescore). What they free goes by reference counting as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class EmbeddingMatrix:
    """Every stored embedding of one model: frames of shas[i] are vectors[offsets[i]:offsets[i + 1]]."""

    model_id: str
    shas: list[str]
    vectors: np.ndarray  # float16 [frames in total, d] as loaded (search keeps a float32 copy)
    offsets: np.ndarray  # int64 [len(shas) + 1]

    def __len__(self) -> int:
        return len(self.shas)

    @property
    def single_frame(self) -> bool:
        return self.vectors.shape[0] == len(self.shas)

    def owner(self) -> np.ndarray:
        """Per frame row, the index of its sha."""
        return np.repeat(np.arange(len(self.shas)), np.diff(self.offsets))

    def rows(self, start: int, stop: int) -> list[np.ndarray]:
        """Float32 [frames, d] of shas[start:stop] (views into one converted block)."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        block = self.vectors[lo:hi].astype(np.float32)
        if hi - lo == stop - start:  # one frame each: row views, much cheaper than np.split
            return list(block.reshape(stop - start, 1, block.shape[1]))
        cuts = (self.offsets[start + 1 : stop] - lo).tolist()
        return np.split(block, cuts) if cuts else [block]


def load_embedding_matrix(store: Store, model_id: str) -> EmbeddingMatrix:
    """One query for the embeddings of `model_id` of scored items (status ok), sorted by sha256.

    Embeddings no scored item refers to (an eval set's images, deleted items) are left out.
    """
    query = (
        "SELECT sha256, frames, dim, vector FROM embeddings WHERE model_id = ? AND sha256 IN "
        "(SELECT sha256 FROM items WHERE status = ? AND sha256 IS NOT NULL) ORDER BY sha256"
    )
    with store.session() as s:
        conn = s.connection()
        rows = conn.exec_driver_sql(driver_sql(conn, query), (model_id, ItemStatus.OK.value)).all()
    if not rows:
        return EmbeddingMatrix(model_id, [], np.zeros((0, 0), np.float16), np.zeros(1, np.int64))
    shas, frame_counts, dim_values, blobs = zip(*rows, strict=True)
    dims = set(dim_values)
    if len(dims) != 1:
        raise ValueError(f"embeddings of {model_id!r} have several dimensions {sorted(dims)}: the store is corrupt")
    frames = np.fromiter(frame_counts, dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(frames)])
    flat = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE)
    vectors = flat.reshape(int(offsets[-1]), dims.pop()).astype(np.float16, copy=False)
    return EmbeddingMatrix(model_id, list(shas), vectors, offsets)


@dataclass(frozen=True)
class StoredItems:
    """Scored items (status ok, bytes read), in id order."""

    ids: list[int]
    uris: list[str]
    shas: list[str]


def load_scored_items(store: Store) -> StoredItems:
    query = "SELECT id, uri, sha256 FROM items WHERE status = ? AND sha256 IS NOT NULL ORDER BY id"
    with store.session() as s:
        conn = s.connection()
        rows = conn.exec_driver_sql(driver_sql(conn, query), (ItemStatus.OK.value,)).all()
    if not rows:
        return StoredItems([], [], [])
    ids, uris, shas = zip(*rows, strict=True)
    return StoredItems(list(ids), list(uris), list(shas))


def stored_actions(store: Store, leave_out: Iterable[str] = ()) -> dict[int, int]:
    """item id -> the most severe action (as severity) of its stored results, except those of
    the policies left out; items with no such result are left out."""
    skip = list(leave_out)
    stmt = select(Result.item_id, func.max(severity_sql(Result.action))).group_by(Result.item_id)
    if skip:
        stmt = stmt.where(Result.policy.not_in(skip))
    with store.session() as s:
        return {int(item_id): int(sev) for item_id, sev in s.connection().execute(stmt)}


def stored_results(store: Store, policies: Iterable[str], item_ids: Iterable[int]) -> dict[int, list[PolicyResult]]:
    """item id -> its stored results of these policies (for second opinions)."""
    out: dict[int, list[PolicyResult]] = defaultdict(list)
    names = sorted(set(policies))
    if not names:
        return out
    cols = (Result.item_id, Result.policy, Result.policy_version, Result.scorer, Result.model_id, Result.action)
    with store.session() as s:
        conn = s.connection()
        for chunk in chunks(dict.fromkeys(item_ids)):
            stmt = select(*cols, Result.scores, Result.fired).where(Result.policy.in_(names), Result.item_id.in_(chunk))
            for item_id, policy, version, scorer, model_id, action, scores, fired in conn.execute(stmt):
                found = tuple(
                    FiredClass(f["name"], Action(f["action"]), f["score"], f["threshold"], f.get("evidence", ""))
                    for f in fired
                )
                out[item_id].append(
                    PolicyResult(policy, version, scorer, model_id, dict(scores), found, Action(action))
                )
    return out


def save_results(store: Store, meta: PolicyMeta, rows: Sequence[tuple[int, EncodedResult]]) -> int:
    """Upsert one policy's results, (item id, encoded result) pairs, and refresh decisions; returns
    decisions changed. `meta` names the policy, its version, scorer and model.

    One transaction. Decisions are refreshed (store/results.py) for the scored items holding
    a result of this policy, over all their stored results (another writer's count too).
    """
    head = (meta.policy, meta.policy_version, meta.scorer, meta.model_id)
    with store.session() as s:
        conn = s.connection()
        upsert_results(conn, [(item_id, *head, *encoded) for item_id, encoded in rows])
        return refresh_decisions(conn, policy=meta.policy)


def embeddings_key(store: Store, model_id: str) -> object:
    """A cheap key that changes when embeddings are added, for cached indexes.

    Embeddings are only ever inserted, so on SQLite the largest rowid is enough (one
    index probe, where counting reads the whole table): it also moves when another
    model's embeddings are added, which costs a reload, never a stale answer. Elsewhere:
    (count, newest created_at) of the model's embeddings.
    """
    with store.session() as s:
        conn = s.connection()
        if conn.dialect.name == "sqlite":
            return conn.exec_driver_sql("SELECT max(rowid) FROM embeddings").scalar()
        stmt = select(func.count(), func.max(Embedding.created_at)).where(Embedding.model_id == model_id)
        return tuple(conn.execute(stmt).one())


def uris_by_sha(store: Store, shas: Iterable[str]) -> dict[str, list[str]]:
    """sha256 -> the uris of items with those bytes (any status), in id order."""
    out: dict[str, list[str]] = defaultdict(list)
    with store.session() as s:
        for chunk in chunks(dict.fromkeys(shas)):
            stmt = select(Item.sha256, Item.uri).where(Item.sha256.in_(chunk)).order_by(Item.id)
            for sha, uri in s.connection().execute(stmt):
                out[str(sha)].append(uri)
    return out

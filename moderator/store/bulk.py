"""Whole-store reads and writes for re-scoring, policy diffs and search.

These touch every stored item, so they avoid per-row work: plain DBAPI rows (no
ORM objects, no per-row type processing), embeddings back in one query as one
float16 matrix (the blobs joined, then one np.frombuffer), re-scored results
written through the same upsert and decision refresh as Store.save_items
(store/results.py): one executemany, one UPDATE.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, select

from moderator.decide import PolicyMeta
from moderator.store.engine import IdRange, chunks, driver_sql, fetch_rows, pages_ahead, reading
from moderator.store.repository import Store
from moderator.store.results import EncodedResult, refresh_decisions, severity_sql, upsert_results
from moderator.store.tables import VECTOR_DTYPE, Embedding, Item, Result
from moderator.types import Action, FiredClass, ItemStatus, PolicyResult


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
    shas, frame_counts, dims, blobs = zip(*rows, strict=True)
    return _matrix(model_id, list(shas), frame_counts, set(dims), blobs)


def _matrix(
    model_id: str, shas: list[str], frame_counts: Sequence[int], dims: set[int], blobs: Sequence[bytes]
) -> EmbeddingMatrix:
    if len(dims) != 1:
        raise ValueError(f"embeddings of {model_id!r} have several dimensions {sorted(dims)}: the store is corrupt")
    frames = np.fromiter(frame_counts, dtype=np.int64, count=len(shas))
    offsets = np.concatenate([[0], np.cumsum(frames)])
    flat = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE)
    return EmbeddingMatrix(model_id, shas, flat.reshape(int(offsets[-1]), dims.pop()), offsets)


@dataclass(frozen=True)
class ItemChunk:
    """A chunk of scored items (status ok, bytes read) in id order, mapped onto the distinct
    embeddings they hold. Items with no embedding of the model are counted in `missing`."""

    ids: list[int]  # items with an embedding
    uris: list[str]
    row: np.ndarray  # int64 [len(ids)]: the matrix row of each item
    matrix: EmbeddingMatrix  # the chunk's distinct embeddings
    missing_ids: list[int]  # items with no embedding of the model
    last_id: int  # the largest item id read (with or without an embedding): the next chunk starts after it

    @property
    def missing(self) -> int:
        return len(self.missing_ids)

    def after(self, item_id: int) -> ItemChunk:
        """The part of the chunk after `item_id` (a policy whose checkpoint lies inside it)."""
        if item_id < (self.ids[0] if self.ids else self.last_id) and all(i > item_id for i in self.missing_ids):
            return self
        keep = [k for k, i in enumerate(self.ids) if i > item_id]
        return ItemChunk(
            [self.ids[k] for k in keep],
            [self.uris[k] for k in keep],
            self.row[keep],
            self.matrix,
            [i for i in self.missing_ids if i > item_id],
            self.last_id,
        )


CHUNK_ITEMS = 20_000  # items per chunk: ~20 MB of float16 ViT-B-32 embeddings, one transaction each
_CHUNK_QUERY = (
    "SELECT i.id, i.uri, i.sha256, e.frames, e.dim, e.vector FROM items i "
    "LEFT JOIN embeddings e ON e.sha256 = i.sha256 AND e.model_id = ? "
    "WHERE i.id > ? AND i.status = ? AND i.sha256 IS NOT NULL ORDER BY i.id LIMIT ?"
)


def iter_item_chunks(store: Store, model_id: str, *, after: int = 0, size: int = CHUNK_ITEMS) -> Iterator[ItemChunk]:
    """The scored items after id `after`, `size` at a time, with their embeddings of
    `model_id`: one keyset query per chunk (items by primary key joined to embeddings by
    theirs), each in its own short read, so memory is two chunks' whatever the store's size
    and no transaction stays open between chunks. The next chunk is read on a background
    thread while the caller works on this one (measured at 1M items on PostgreSQL: the reads
    were half of a policy diff), inline for an engine that shares one connection."""

    def read(last: int) -> Sequence[Sequence[Any]]:
        with store.session() as s:
            return fetch_rows(s.connection(), _CHUNK_QUERY, (model_id, last, ItemStatus.OK.value, size))

    for rows in pages_ahead(store.engine, "chunk-reader", read, after, size):
        yield _chunk(model_id, rows)


def _chunk(model_id: str, rows: Sequence[Any]) -> ItemChunk:
    ids_, uris_, shas, frame_counts_, dims_, blobs_ = zip(*rows, strict=True)
    if None not in blobs_ and len(set(shas)) == len(shas):  # the usual chunk: all embedded, bytes distinct
        matrix = _matrix(model_id, list(shas), frame_counts_, set(dims_), blobs_)
        n = len(rows)
        return ItemChunk(list(ids_), list(uris_), np.arange(n, dtype=np.int64), matrix, [], int(ids_[-1]))
    index: dict[str, int] = {}
    ids: list[int] = []
    uris: list[str] = []
    where: list[int] = []
    frame_counts: list[int] = []
    dims: set[int] = set()
    blobs: list[bytes] = []
    missing: list[int] = []
    for item_id, uri, sha, frames, dim, blob in rows:
        if blob is None:
            missing.append(item_id)
            continue
        row = index.get(sha)
        if row is None:
            row = index[sha] = len(blobs)
            frame_counts.append(frames)
            dims.add(dim)
            blobs.append(blob)
        ids.append(item_id)
        uris.append(uri)
        where.append(row)
    matrix = (
        _matrix(model_id, list(index), frame_counts, dims, blobs)
        if blobs
        else EmbeddingMatrix(model_id, [], np.zeros((0, 0), np.float16), np.zeros(1, np.int64))
    )
    return ItemChunk(ids, uris, np.array(where, dtype=np.int64), matrix, missing, int(rows[-1][0]))


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


def stored_actions(
    store: Store, leave_out: Iterable[str] = (), item_ids: Sequence[int] | None = None
) -> dict[int, int]:
    """item id -> the most severe action (as severity) of its stored results, except those of
    the policies left out; items with no such result are left out. `item_ids`: only these
    (a chunk's: one range query, the ids filtered here)."""
    skip = list(leave_out)
    stmt = select(Result.item_id, func.max(severity_sql(Result.action))).group_by(Result.item_id)
    if skip:
        stmt = stmt.where(Result.policy.not_in(skip))
    if item_ids is not None:
        if not item_ids:
            return {}
        stmt = stmt.where(Result.item_id.between(min(item_ids), max(item_ids)))
    with store.session() as s:
        found = {int(item_id): int(sev) for item_id, sev in s.connection().execute(stmt)}
    if item_ids is None:
        return found
    return {i: found[i] for i in item_ids if i in found}


def stored_results(
    source: Store | Connection, policies: Iterable[str], item_ids: Iterable[int]
) -> dict[int, list[PolicyResult]]:
    """item id -> its stored results of these policies (for second opinions); `source` a store,
    or a connection whose transaction's own writes count."""
    out: dict[int, list[PolicyResult]] = defaultdict(list)
    names = sorted(set(policies))
    if not names:
        return out
    cols = (Result.item_id, Result.policy, Result.policy_version, Result.scorer, Result.model_id, Result.action)
    with reading(source) as conn:
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


ResultRows = Sequence[tuple[int, EncodedResult]]  # (item id, encoded result) of one policy


def save_results(
    store: Store,
    parts: Sequence[tuple[PolicyMeta, Callable[[Connection], ResultRows]]],
    *,
    id_range: IdRange | None = None,
    then: Callable[[Connection, int], None] | None = None,
) -> int:
    """Upsert the results of one or more policies and refresh decisions once; returns decisions changed.

    A part is (meta naming the policy, its version, scorer and model; a function giving its rows
    from the transaction's connection): a part's rows may depend on what the parts before it
    wrote (a second opinion judged on another policy's new results). One transaction.
    Decisions are refreshed (store/results.py) over all the items' stored results (another
    writer's count too): for `id_range` when given (a rescore's chunk: one range, not a list
    per 500 ids), else for every scored item holding a result of a part's policy. `then` runs
    last in the same transaction (a rescore moves its checkpoints there: all of it commits, or none).
    """
    with store.session() as s:
        conn = s.connection()
        written = 0
        for meta, rows_of in parts:
            head = (meta.policy, meta.policy_version, meta.scorer, meta.model_id)
            rows = rows_of(conn)
            upsert_results(conn, [(item_id, *head, *encoded) for item_id, encoded in rows])
            written += len(rows)
        changed = 0
        if id_range is None:
            for name in dict.fromkeys(meta.policy for meta, _ in parts):
                changed += refresh_decisions(conn, policy=name)
        elif written:
            changed = refresh_decisions(conn, id_range=id_range)
        if then is not None:
            then(conn, changed)
        return changed


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

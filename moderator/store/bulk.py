"""Whole-store reads and writes for re-scoring, policy diffs and search.

These touch every stored item, so they avoid per-row work: embeddings come back
in one query as one float16 matrix (the blobs joined, then one np.frombuffer),
and re-scored results are written in chunks, one executemany per table each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import bindparam, func, select, update

from moderator.store.repository import VECTOR_DTYPE, Store, _chunks, _result_row, _table
from moderator.store.tables import Embedding, Item, Result, utcnow
from moderator.types import Action, ItemStatus, PolicyResult, most_severe

WRITE_CHUNK = 5000  # items per transaction when writing results


@dataclass(frozen=True)
class EmbeddingMatrix:
    """Every stored embedding of one model: frames of shas[i] are vectors[offsets[i]:offsets[i + 1]]."""

    model_id: str
    shas: list[str]
    vectors: np.ndarray  # float16 [frames in total, d]
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
        cuts = (self.offsets[start + 1 : stop] - lo).tolist()
        return np.split(block, cuts) if cuts else [block]


def load_embedding_matrix(store: Store, model_id: str) -> EmbeddingMatrix:
    """One query for the embeddings of `model_id` of scored items (status ok), sorted by sha256.

    Embeddings no scored item refers to (an eval set's images, deleted items) are left out.
    """
    scored = select(Item.sha256).where(Item.status == ItemStatus.OK, Item.sha256.is_not(None))
    stmt = (
        select(Embedding.sha256, Embedding.frames, Embedding.dim, Embedding.vector)
        .where(Embedding.model_id == model_id, Embedding.sha256.in_(scored))
        .order_by(Embedding.sha256)
    )
    with store.session() as s:
        rows = s.connection().execute(stmt).all()
    if not rows:
        return EmbeddingMatrix(model_id, [], np.zeros((0, 0), np.float16), np.zeros(1, np.int64))
    dims = {row.dim for row in rows}
    if len(dims) != 1:
        raise ValueError(f"embeddings of {model_id!r} have several dimensions {sorted(dims)}: the store is corrupt")
    frames = np.fromiter((row.frames for row in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(frames)])
    flat = np.frombuffer(b"".join(row.vector for row in rows), dtype=VECTOR_DTYPE)
    vectors = flat.reshape(int(offsets[-1]), dims.pop()).astype(np.float16, copy=False)
    return EmbeddingMatrix(model_id, [row.sha256 for row in rows], vectors, offsets)


@dataclass(frozen=True)
class StoredItems:
    """Scored items (status ok, bytes read), in id order."""

    ids: list[int]
    uris: list[str]
    shas: list[str]


def load_scored_items(store: Store) -> StoredItems:
    stmt = (
        select(Item.id, Item.uri, Item.sha256)
        .where(Item.status == ItemStatus.OK, Item.sha256.is_not(None))
        .order_by(Item.id)
    )
    with store.session() as s:
        rows = s.connection().execute(stmt).all()
    return StoredItems([r.id for r in rows], [r.uri for r in rows], [r.sha256 for r in rows])


def stored_actions(store: Store, leave_out: Iterable[str] = ()) -> dict[int, list[Action]]:
    """item id -> the actions of its stored results, except those of the policies left out."""
    skip = list(leave_out)
    stmt = select(Result.item_id, Result.action)
    if skip:
        stmt = stmt.where(Result.policy.not_in(skip))
    out: dict[int, list[Action]] = defaultdict(list)
    with store.session() as s:
        for item_id, action in s.connection().execute(stmt):
            out[item_id].append(Action(action))
    return out


def stored_fired(store: Store, policies: Sequence[str]) -> dict[int, list[PolicyResult]]:
    """item id -> stored results of these policies, with what fired (for second opinions)."""
    from moderator.types import FiredClass

    out: dict[int, list[PolicyResult]] = defaultdict(list)
    if not policies:
        return out
    stmt = select(Result).where(Result.policy.in_(list(policies)))
    with store.session() as s:
        for r in s.scalars(stmt):
            fired = tuple(
                FiredClass(f["name"], Action(f["action"]), f["score"], f["threshold"], f.get("evidence", ""))
                for f in r.fired
            )
            out[r.item_id].append(
                PolicyResult(r.policy, r.policy_version, r.scorer, r.model_id, dict(r.scores), fired, Action(r.action))
            )
    return out


def save_results(store: Store, results: Sequence[tuple[int, PolicyResult]], *, chunk: int = WRITE_CHUNK) -> int:
    """Upsert (item id, result) pairs and refresh those items' decisions; returns decisions changed.

    A decision is the most severe action over all the item's stored results, recomputed
    inside the same transaction (another writer's results count too), and written only
    where it changed.
    """
    upsert = store._insert(Result)
    replaced = ("policy_version", "scorer", "model_id", "action", "scores", "fired", "tags", "created_at")
    upsert = upsert.on_conflict_do_update(
        index_elements=["item_id", "policy"], set_={c: upsert.excluded[c] for c in replaced}
    )
    items = _table(Item)
    set_decision = update(items).where(items.c.id == bindparam("b_id")).values(decision=bindparam("b_decision"))
    changed = 0
    now = utcnow()
    for part in _chunks(results, chunk):
        ids = sorted({item_id for item_id, _ in part})
        with store.session() as s:
            conn = s.connection()
            conn.execute(upsert, [_result_row(item_id, result, now) for item_id, result in part])
            actions: dict[int, list[Action]] = defaultdict(list)
            current: dict[int, Any] = {}
            for id_chunk in _chunks(ids):
                for item_id, action in conn.execute(
                    select(Result.item_id, Result.action).where(Result.item_id.in_(id_chunk))
                ):
                    actions[item_id].append(Action(action))
                for item_id, decision in conn.execute(select(Item.id, Item.decision).where(Item.id.in_(id_chunk))):
                    current[item_id] = decision
            rows = [{"b_id": i, "b_decision": new} for i in ids if (new := most_severe(actions[i])) != current.get(i)]
            if rows:
                conn.execute(set_decision, rows)
            changed += len(rows)
    return changed


def embedding_count(store: Store, model_id: str) -> tuple[int, Any]:
    """(count, newest created_at) of a model's embeddings: a cheap staleness key for cached indexes."""
    stmt = select(func.count(), func.max(Embedding.created_at)).where(Embedding.model_id == model_id)
    with store.session() as s:
        n, newest = s.connection().execute(stmt).one()
    return int(n), newest


def uris_by_sha(store: Store, shas: Iterable[str]) -> dict[str, list[str]]:
    """sha256 -> the uris of items with those bytes (any status), in id order."""
    out: dict[str, list[str]] = defaultdict(list)
    with store.session() as s:
        for chunk in _chunks(dict.fromkeys(shas)):
            stmt = select(Item.sha256, Item.uri).where(Item.sha256.in_(chunk)).order_by(Item.id)
            for sha, uri in s.connection().execute(stmt):
                out[str(sha)].append(uri)
    return out

"""Search stored items by text or by example image: cosine similarity on stored embeddings.

Two ways, one answer (issue 17). Small stores (fewer embeddings of the model than
`search_exact_below`) are searched exactly: the store's matrix (store.bulk) converted once
to float32 and kept in memory, one BLAS matrix-vector product per query. Larger ones go
through the approximate index on disk (engine/ann.py: HNSW segments memory-mapped and
shared by processes, plus an exact delta of rows newer than it); its candidates are scored
again exactly from their stored rows, so scores are the same either way. Freshness is one
`max(embeddings.seq)` probe, never a count. Embeddings are unit length, so the dot product
is the cosine; an item with several frames scores its best frame. Hits are contents
(sha256) that some scored item (status ok) has, narrowed by an optional ItemFilter; text
queries are encoded once per process per (model, text).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
from sqlalchemy import Connection, select

from moderator.engine.ann import AnnIndex, build, index_root, max_seq, model_dir, read_seqs, seq_of
from moderator.settings import Settings
from moderator.store import Store
from moderator.store.bulk import EmbeddingMatrix, load_embedding_matrix
from moderator.store.engine import chunks, gc_paused, reading
from moderator.store.tables import Item, Result
from moderator.types import Action, ItemStatus, SourceItem

CHUNK = 16384  # float16 rows converted to float32 at a time (32 MiB at 512-d)
TEXT_CACHE = 1024  # text query embeddings kept per process
MAX_CANDIDATES = 4096  # a selective filter gives fewer than k hits rather than scanning on


@dataclass(frozen=True)
class Hit:
    sha256: str
    score: float
    uris: list[str]


def top_k(matrix: EmbeddingMatrix, query: np.ndarray, k: int, *, chunk: int = CHUNK) -> list[tuple[int, float]]:
    """(sha index, cosine) of the k best, best first; ties by sha order."""
    if len(matrix) == 0 or k <= 0:
        return []
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != matrix.vectors.shape[1]:
        raise ValueError(
            f"query has {q.shape[0]} dimensions, the stored embeddings {matrix.vectors.shape[1]}: another model"
        )
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    if matrix.vectors.dtype == np.float32:
        sims = matrix.vectors @ q
    else:  # float16 as stored: converted chunk by chunk, so memory stays at one chunk
        rows = matrix.vectors.shape[0]
        sims = np.empty(rows, np.float32)
        for start in range(0, rows, chunk):
            sims[start : start + chunk] = matrix.vectors[start : start + chunk].astype(np.float32) @ q
    per_item = sims if matrix.single_frame else np.maximum.reduceat(sims, matrix.offsets[:-1])
    k = min(k, len(per_item))
    best = np.argpartition(-per_item, k - 1)[:k]
    best = best[np.lexsort((best, -per_item[best]))]
    return [(int(i), float(per_item[i])) for i in best]


@dataclass(frozen=True)
class ItemFilter:
    """Which items a hit may name: all given conditions hold for the item (any item with the bytes)."""

    decision: Action | None = None
    policy: str | None = None  # items this policy flagged (its result's action is not allow)
    uri_prefix: str | None = None
    since: datetime | None = None  # items.updated_at (when last scanned)
    until: datetime | None = None


def matching_uris(source: Store | Connection, shas: list[str], where: ItemFilter | None = None) -> dict[str, list[str]]:
    """sha256 -> uris (id order) of the scored items with those bytes that pass the filter."""
    f = where or ItemFilter()
    out: dict[str, list[str]] = defaultdict(list)
    with reading(source) as s:
        for chunk in chunks(dict.fromkeys(shas)):
            stmt = select(Item.sha256, Item.uri).where(Item.sha256.in_(chunk), Item.status == ItemStatus.OK)
            if f.decision is not None:
                stmt = stmt.where(Item.decision == f.decision)
            if f.uri_prefix:
                escaped = f.uri_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                stmt = stmt.where(Item.uri.like(escaped + "%", escape="\\"))
            if f.since is not None:
                stmt = stmt.where(Item.updated_at >= f.since)
            if f.until is not None:
                stmt = stmt.where(Item.updated_at < f.until)
            if f.policy:
                flagged = select(Result.item_id).where(Result.policy == f.policy, Result.action != Action.ALLOW)
                stmt = stmt.where(Item.id.in_(flagged))
            for sha, uri in s.execute(stmt.order_by(Item.id)):
                out[str(sha)].append(uri)
    return out


class SearchIndex:
    """The stored embeddings of one model: exact for a small store, else the index on disk."""

    def __init__(self, store: Store, model_id: str, settings: Settings | None = None) -> None:
        self.store = store
        self.model_id = model_id
        self.settings = settings or Settings(database_url=store.url.render_as_string(hide_password=False))
        self.ann = AnnIndex(store, self.settings, model_id, model_dir(index_root(self.settings, store), model_id))
        self._key: int | None = None
        self._matrix: EmbeddingMatrix | None = None
        self._lock = threading.Lock()

    @property
    def matrix(self) -> EmbeddingMatrix:
        """The embeddings, float32 (loaded again when embeddings were added: max(seq) moved)."""
        key = max_seq(self.store, self.model_id)
        with self._lock:
            if self._matrix is None or key != self._key:
                with gc_paused():
                    loaded = load_embedding_matrix(self.store, self.model_id)
                    self._matrix = replace(loaded, vectors=loaded.vectors.astype(np.float32))
                self._key = key
            return self._matrix

    def approximate(self) -> bool:
        """Whether queries go through the index on disk (building it when the store has grown past exact)."""
        if self.ann.exists:
            return True
        if max_seq(self.store, self.model_id) < self.settings.search_exact_below:
            return False
        build(self.store, self.settings, self.model_id, self.ann.folder, if_missing=True)  # once, whoever is first
        self._matrix = None
        return True

    def reindex(self) -> int:
        """Build the index on disk from every stored embedding of the model; returns frames indexed."""
        manifest = build(self.store, self.settings, self.model_id, self.ann.folder)
        self._matrix = None  # the exact copy is no longer needed
        return sum(int(seg["frames"]) for seg in manifest["segments"])

    def _exact(self, q: np.ndarray, count: int, conn: Connection) -> list[tuple[str, float]]:
        matrix = self.matrix
        return [(matrix.shas[i], score) for i, score in top_k(matrix, q, count)]

    def _approximate(self, q: np.ndarray, count: int, conn: Connection) -> list[tuple[str, float]]:
        self.ann.refresh(conn)
        keys, _ = self.ann.search(q, count * 2)
        seqs = list(dict.fromkeys(seq_of(keys).tolist()))  # best first, one per row
        rows = read_seqs(conn, self.model_id, seqs)
        if not len(rows.keys):
            return []
        if rows.vectors.shape[1] != q.shape[0]:
            raise ValueError(
                f"query has {q.shape[0]} dimensions, the stored embeddings {rows.vectors.shape[1]}: another model"
            )
        order = np.argsort(rows.seqs)  # the row of each frame, then its best frame, exactly
        owner = np.searchsorted(rows.seqs[order], seq_of(rows.keys))
        per_row = np.full(len(rows.seqs), -np.inf, np.float32)
        np.maximum.at(per_row, order[owner], rows.vectors @ q)
        best = sorted(zip(rows.shas, per_row.tolist(), strict=True), key=lambda p: (-p[1], p[0]))
        return best[:count]

    def search(
        self, query: np.ndarray, k: int = 20, *, exclude: str | None = None, where: ItemFilter | None = None
    ) -> list[Hit]:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        candidates = self._approximate if self.approximate() else self._exact
        count, seen = k + 8, 0
        with self.store.engine.connect() as conn:  # one connection for the few reads of a query
            while True:  # scored items that pass the filter, fetching more candidates while too few do
                found = [(sha, score) for sha, score in candidates(q, count, conn) if sha != exclude]
                uris = matching_uris(conn, [sha for sha, _ in found], where)
                hits = [Hit(sha, round(score, 6), uris[sha]) for sha, score in found if sha in uris][:k]
                if len(hits) >= k or len(found) <= seen or count >= MAX_CANDIDATES:
                    return hits
                seen, count = len(found), min(count * 4, MAX_CANDIDATES)


_texts: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_texts_lock = threading.Lock()


def text_query(settings: Settings, text: str) -> np.ndarray:
    """The CLIP text embedding of `text` (raises ScorerUnavailable without weights), read-only.

    Kept per process for the last TEXT_CACHE (model, text) pairs: a repeated query skips the encoder.
    """
    from moderator.models.clip import get_clip_model, model_id_for

    key = (model_id_for(settings), text)
    with _texts_lock:
        if key in _texts:
            _texts.move_to_end(key)
            return _texts[key]
    vector: np.ndarray = get_clip_model(settings).encode_text([text])[0]
    vector.flags.writeable = False
    with _texts_lock:
        _texts[key] = vector
        while len(_texts) > TEXT_CACHE:
            _texts.popitem(last=False)
    return vector


def image_query(settings: Settings, image: SourceItem, store: Store | None = None) -> np.ndarray:
    """The embedding of an example image (its stored one when the store has it, never saved); ValueError
    naming the image if it cannot be read or decoded. items_from_files / items_from_bytes make `image`."""
    from moderator.engine.prepare import Needs, Preparer
    from moderator.engine.probes import item_features

    (found,) = Preparer(settings, Needs(embeddings=True), store=store, save=False).prepare_all([image])
    if found.embedding is None:
        raise ValueError(f"{image.uri}: {found.error}")
    return item_features(found.embedding)


def item_query(store: Store, model_id: str, sha256: str) -> np.ndarray | None:
    """The stored embedding of an item's content ("more like this"), or None."""
    from moderator.engine.probes import item_features

    stored = store.load_embeddings([sha256], model_id).get(sha256)
    return None if stored is None else item_features(stored)

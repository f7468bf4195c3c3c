"""Search stored items by text or by example image: exact cosine similarity on stored embeddings.

The index is the store's matrix (store.bulk.load_embedding_matrix) converted once to
float32 and kept in memory (2 KiB per frame at 512-d: 200 MiB for 100k items), so a
query is one BLAS matrix-vector product; converting float16 per query cost more than
the product itself. Embeddings are unit length, so the dot product is the cosine. An
item with several frames scores its best frame. No approximate index: exact search
over 100k items is under the 200 ms goal (benchmarks/lifecycle_speed.py). Text
queries are encoded once per process per (model, text).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from moderator.settings import Settings
from moderator.store import Store
from moderator.store.bulk import EmbeddingMatrix, embeddings_key, gc_paused, load_embedding_matrix, uris_by_sha
from moderator.types import SourceItem

CHUNK = 16384  # float16 rows converted to float32 at a time (32 MiB at 512-d)
TEXT_CACHE = 1024  # text query embeddings kept per process


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


class SearchIndex:
    """The stored embeddings of one model, reloaded when the store has new ones."""

    def __init__(self, store: Store, model_id: str) -> None:
        self.store = store
        self.model_id = model_id
        self._key: object = None
        self._matrix: EmbeddingMatrix | None = None

    @property
    def matrix(self) -> EmbeddingMatrix:
        """The embeddings, float32 (loaded again when embeddings were added)."""
        key = embeddings_key(self.store, self.model_id)
        if self._matrix is None or key != self._key:
            with gc_paused():
                loaded = load_embedding_matrix(self.store, self.model_id)
                self._matrix = replace(loaded, vectors=loaded.vectors.astype(np.float32))
            self._key = key
        return self._matrix

    def search(self, query: np.ndarray, k: int = 20, *, exclude: str | None = None) -> list[Hit]:
        matrix = self.matrix
        found = top_k(matrix, query, k + (1 if exclude else 0))
        hits = [(matrix.shas[i], score) for i, score in found if matrix.shas[i] != exclude][:k]
        uris = uris_by_sha(self.store, [sha for sha, _ in hits])
        return [Hit(sha, round(score, 6), uris.get(sha, [])) for sha, score in hits]


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

"""The approximate search index of stored embeddings: HNSW (usearch) files on disk, memory-mapped.

One folder per (store, model): `manifest.json` names immutable segment files (usearch
indexes, opened with `view=True`, so every process on the machine shares one copy in the
page cache) and the watermark, the highest `embeddings.seq` they were built up to. A key is
`seq << FRAME_BITS | frame`, so a hit names its row and frame and nothing else is stored.

Freshness is one index probe: `max(seq)` of the model. Rows above the watermark are read
once (`seq > what this process has`) into an exact in-memory delta searched with the
segments. When the delta passes `search_delta_max`, a thread takes the folder's file lock,
writes the rows as a new segment (small segments merge while the newer is at least half
the older, so there are O(log n) of them) and swaps the manifest in with os.replace;
readers notice by one stat of the manifest. PostgreSQL hands out identities in insertion
order but commits need not follow it: a row committed after a higher-numbered one was read
is not in this process's delta; the next segment written picks it up (it re-reads the seqs
of the last WINDOW below the watermark and adds any row the index lacks), so such a row is
missed for at most about `search_delta_max` further embeddings, or until a reindex.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from moderator.settings import Settings, user_data
from moderator.store import Store
from moderator.store.engine import driver_sql, reading
from moderator.store.tables import VECTOR_DTYPE, Embedding

FRAME_BITS = 7  # frames per embedding row: at most 65 (video_frames + 1)
WINDOW = 100_000  # seqs below the watermark re-checked for late commits when a segment is written
READ_CHUNK = 20_000  # rows per keyset page when reading embeddings by seq
MANIFEST = "manifest.json"


def keys_of(seqs: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """One uint64 key per frame of each row."""
    seq_rep = np.repeat(seqs.astype(np.uint64), frames)
    starts = np.repeat(np.cumsum(frames) - frames, frames)
    frame_no = (np.arange(int(frames.sum())) - starts).astype(np.uint64)
    return (seq_rep << np.uint64(FRAME_BITS)) | frame_no


def seq_of(keys: np.ndarray) -> np.ndarray:
    return (keys.astype(np.uint64) >> np.uint64(FRAME_BITS)).astype(np.int64)


def index_root(settings: Settings | None, store: Store) -> Path:
    """The setting, else `<sqlite file>.search/`, else a folder per database in the user data dir."""
    if settings is not None and settings.search_index_dir is not None:
        return settings.search_index_dir
    url = store.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(f"{url.database}.search")
    name = url.render_as_string(hide_password=True)
    return user_data() / "search-index" / hashlib.sha256(name.encode()).hexdigest()[:16]


def model_dir(root: Path, model_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:60]
    return root / f"{safe}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


# -- the store side: O(1) freshness and reads by seq ---------------------------------------


def max_seq(source: Store | Connection, model_id: str) -> int:
    """The newest embedding row of the model (0 when none): one probe of ix (model_id, seq)."""
    with reading(source) as conn:
        sql = driver_sql(conn, "SELECT max(seq) FROM embeddings WHERE model_id = ?")
        return int(conn.exec_driver_sql(sql, (model_id,)).scalar() or 0)


@dataclass(frozen=True)
class Rows:
    """Embedding rows: per frame its key and float32 vector; per row seq and sha256."""

    seqs: np.ndarray  # int64 [rows]
    shas: list[str]
    keys: np.ndarray  # uint64 [frames in total]
    vectors: np.ndarray  # float32 [frames in total, d]

    @staticmethod
    def of(rows: list[Any]) -> Rows:
        if not rows:
            return Rows(np.zeros(0, np.int64), [], np.zeros(0, np.uint64), np.zeros((0, 0), np.float32))
        seqs = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        frames = np.fromiter((r[2] for r in rows), np.int64, len(rows))
        dim = int(rows[0][3])
        flat = np.frombuffer(b"".join(r[4] for r in rows), dtype=VECTOR_DTYPE).reshape(-1, dim)
        return Rows(seqs, [str(r[1]) for r in rows], keys_of(seqs, frames), flat.astype(np.float32))


COLUMNS = (Embedding.seq, Embedding.sha256, Embedding.frames, Embedding.dim, Embedding.vector)


def read_after(store: Store, model_id: str, after: int, *, chunk: int = READ_CHUNK) -> Iterator[Rows]:
    """Rows of the model with seq > after, in seq order, a keyset page at a time (bounded memory)."""
    while True:
        stmt = (
            select(*COLUMNS)
            .where(Embedding.model_id == model_id, Embedding.seq > after)
            .order_by(Embedding.seq)
            .limit(chunk)
        )
        with store.session() as s:
            rows = list(s.execute(stmt))
        if not rows:
            return
        yield Rows.of(rows)
        after = int(rows[-1][0])
        if len(rows) < chunk:
            return


def read_seqs(source: Store | Connection, model_id: str, seqs: list[int]) -> Rows:
    rows: list[Any] = []
    with reading(source) as conn:
        for start in range(0, len(seqs), 500):
            part = seqs[start : start + 500]
            sql = (
                "SELECT seq, sha256, frames, dim, vector FROM embeddings WHERE model_id = ? AND seq IN "
                f"({', '.join('?' * len(part))})"
            )
            rows.extend(conn.exec_driver_sql(driver_sql(conn, sql), (model_id, *part)).all())
    return Rows.of(rows)


def seqs_between(store: Store, model_id: str, lo: int, hi: int) -> np.ndarray:
    stmt = select(Embedding.seq).where(Embedding.model_id == model_id, Embedding.seq > lo, Embedding.seq <= hi)
    with store.session() as s:
        return np.fromiter((int(v) for v in s.execute(stmt).scalars()), np.int64)


# -- the files ---------------------------------------------------------------------------


@contextmanager
def folder_lock(folder: Path, *, wait: bool = True) -> Iterator[bool]:
    """The folder's writer lock (flock: released if the process dies); yields False if not waiting and taken."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def new_index(dim: int, settings: Settings) -> Any:
    from usearch.index import Index

    return Index(
        ndim=dim,
        metric="ip",
        dtype=settings.search_quantization,
        connectivity=16,
        expansion_add=128,
        expansion_search=settings.search_expansion,
    )


def restore(path: Path, *, view: bool = True) -> Any:
    """A saved segment: memory-mapped read-only (view), or loaded to be added to."""
    from usearch.index import Index

    index = Index.restore(str(path), view=view)
    if index is None:
        raise FileNotFoundError(f"{path}: not a search index segment")
    return index


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    return data


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Atomic: readers see the old manifest or the new one; files no longer named are removed (an
    open memory map keeps its file until it is closed)."""
    tmp = folder / f".{MANIFEST}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, folder / MANIFEST)
    keep = {seg["file"] for seg in manifest["segments"]} | {MANIFEST, "lock"}
    for path in folder.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink(missing_ok=True)


def save_segment(folder: Path, index: Any) -> str:
    name = f"seg-{uuid.uuid4().hex}.usearch"
    tmp = folder / f".{name}"
    index.save(str(tmp))
    os.replace(tmp, folder / name)
    return name


def build(store: Store, settings: Settings, model_id: str, folder: Path, *, if_missing: bool = False) -> dict[str, Any]:
    """Index every stored embedding of the model from scratch (`moderator search --reindex`); with
    `if_missing`, only when no other process has built it meanwhile."""
    with folder_lock(folder):
        if if_missing and (found := read_manifest(folder)) is not None:
            return found
        index: Any = None
        watermark = 0
        for rows in read_after(store, model_id, 0):
            if index is None:
                index = new_index(rows.vectors.shape[1], settings)
            index.add(rows.keys, rows.vectors, threads=os.cpu_count() or 1)
            watermark = int(rows.seqs[-1])
        manifest: dict[str, Any] = {"version": 1, "model_id": model_id, "watermark": watermark, "segments": []}
        if index is not None:
            manifest["dim"] = index.ndim
            manifest["segments"] = [{"file": save_segment(folder, index), "frames": len(index)}]
        write_manifest(folder, manifest)
        return manifest


def extend(store: Store, settings: Settings, model_id: str, folder: Path, *, wait: bool = True) -> bool:
    """Write the rows the index lacks as a new segment, merging small ones; False if another process is at it."""
    with folder_lock(folder, wait=wait) as locked:
        if not locked:
            return False
        manifest = read_manifest(folder)
        if manifest is None or not manifest["segments"]:
            build(store, settings, model_id, folder)
            return True
        views = [restore(folder / seg["file"]) for seg in manifest["segments"]]
        watermark = int(manifest["watermark"])
        recent = seqs_between(store, model_id, max(0, watermark - WINDOW), watermark)
        first_keys = recent.astype(np.uint64) << np.uint64(FRAME_BITS)
        held = np.zeros(len(recent), bool)
        for view in views:
            held |= np.asarray(view.contains(first_keys), bool)
        late = read_seqs(store, model_id, [int(v) for v in recent[~held]])
        parts = [late, *read_after(store, model_id, watermark)]
        keys = np.concatenate([p.keys for p in parts])
        if len(keys) == 0:
            return True
        vectors = np.concatenate([p.vectors for p in parts if len(p.keys)])
        index = new_index(vectors.shape[1], settings)
        index.add(keys, vectors, threads=os.cpu_count() or 1)
        segments = list(manifest["segments"])
        # While the newest is at least half the one before, its rows join that one (loaded, added to, written
        # again): O(log n) segments, and each merge inserts only the smaller side's rows into a graph.
        while segments and len(index) * 2 >= segments[-1]["frames"]:
            older = restore(folder / segments.pop()["file"], view=False)
            moved = np.asarray(index.keys, np.uint64)
            older.add(moved, np.asarray(index.get(moved), np.float32), threads=os.cpu_count() or 1)
            index = older
        segments.append({"file": save_segment(folder, index), "frames": len(index)})
        top = max(watermark, *(int(p.seqs.max()) for p in parts if len(p.seqs)))
        write_manifest(folder, {**manifest, "watermark": top, "segments": segments})
        return True


# -- the reader -----------------------------------------------------------------------------


@dataclass
class Delta:
    """Rows newer than the index, searched exactly."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    hi: int = 0  # rows up to this seq were read

    def add(self, rows: Rows) -> None:
        if not len(rows.keys):
            return
        self.keys = np.concatenate([self.keys, rows.keys])
        self.vectors = rows.vectors if not len(self.vectors) else np.concatenate([self.vectors, rows.vectors])

    def keep(self, mask: np.ndarray) -> None:
        self.keys, self.vectors = self.keys[mask], self.vectors[mask]


class AnnIndex:
    """The on-disk index of one model as one process sees it: segments (memory-mapped) plus delta."""

    def __init__(self, store: Store, settings: Settings, model_id: str, folder: Path) -> None:
        self.store, self.settings, self.model_id, self.folder = store, settings, model_id, folder
        self._stamp: tuple[int, int] | None = None
        self._views: list[Any] = []
        self._watermark = 0
        self.delta = Delta()
        self._lock = threading.Lock()
        self._extending: threading.Thread | None = None

    @property
    def exists(self) -> bool:
        return (self.folder / MANIFEST).exists()

    def frames(self) -> int:
        return sum(len(v) for v in self._views) + len(self.delta.keys)

    def _reload(self) -> None:
        try:
            st = os.stat(self.folder / MANIFEST)
        except FileNotFoundError:
            st = None
        stamp = None if st is None else (st.st_ino, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        manifest = read_manifest(self.folder) if stamp else None
        segments = [] if manifest is None else manifest["segments"]
        self._views = [restore(self.folder / seg["file"]) for seg in segments]
        self._watermark = 0 if manifest is None else int(manifest["watermark"])
        self._stamp = stamp
        if len(self.delta.keys):  # what the new segments hold leaves the delta
            held = np.zeros(len(self.delta.keys), bool)
            for view in self._views:
                held |= np.asarray(view.contains(self.delta.keys), bool)
            self.delta.keep(~held)
        self.delta.hi = max(self.delta.hi, self._watermark)

    def refresh(self, conn: Connection | None = None) -> None:
        """One stat of the manifest, one max(seq) probe; reads only rows this process has not seen."""
        with self._lock:
            self._reload()
            top = max_seq(conn or self.store, self.model_id)
            if top < self._watermark:  # the store was emptied or restored under the index: build it again
                build(self.store, self.settings, self.model_id, self.folder)
                self.delta = Delta()
                self._stamp = None
                self._reload()
            if top > self.delta.hi:
                for rows in read_after(self.store, self.model_id, self.delta.hi):
                    self.delta.add(rows)
                    self.delta.hi = int(rows.seqs[-1])
            if len(self.delta.keys) > self.settings.search_delta_max and self._extending is None:
                self._extending = threading.Thread(target=self._extend, name="search-index-extend", daemon=True)
                self._extending.start()

    def _extend(self) -> None:
        try:
            extend(self.store, self.settings, self.model_id, self.folder, wait=False)
        finally:
            self._extending = None

    def wait_extended(self) -> None:
        thread = self._extending
        if thread is not None:
            thread.join()

    def search(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, cosine) of about the `count` best frames, best first (call refresh() first)."""
        with self._lock:  # refresh() swaps segments and delta
            return self._search(np.ascontiguousarray(query, dtype=np.float32), count)

    def _search(self, q: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        dims = {v.ndim for v in self._views} | ({self.delta.vectors.shape[1]} if len(self.delta.keys) else set())
        if dims and dims != {q.shape[0]}:
            raise ValueError(f"query has {q.shape[0]} dimensions, the stored embeddings {min(dims)}: another model")
        keys, sims = [], []
        for view in self._views:
            view.expansion_search = max(self.settings.search_expansion, count)
            found = view.search(q, min(count, len(view)))
            keys.append(np.asarray(found.keys, np.uint64))
            sims.append(1.0 - np.asarray(found.distances, np.float32))
        delta = self.delta
        if len(delta.keys):
            d_sims = delta.vectors @ q
            top = np.argsort(-d_sims)[:count]
            keys.append(delta.keys[top])
            sims.append(d_sims[top])
        if not keys:
            return np.zeros(0, np.uint64), np.zeros(0, np.float32)
        all_keys, all_sims = np.concatenate(keys), np.concatenate(sims)
        order = np.argsort(-all_sims, kind="stable")[:count]
        return all_keys[order], all_sims[order]

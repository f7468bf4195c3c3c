"""The reader stage: bytes, identity, skip-unchanged, byte scorers, decode and preprocess.

Runs in the pipeline's background thread, fanning each batch out to a thread pool
(Pillow's decoders and resizers release the GIL). One store query per batch for the
known items and one for stored embeddings: no per-image round trips.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moderator.decode import DecodeError, decode_image
from moderator.scorers import ScoringBatch
from moderator.types import Action, ItemStatus, PolicyResult, SourceItem

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from moderator.pipeline import Pipeline
    from moderator.store import KnownItem


@dataclass
class PreparedItem:
    item: SourceItem
    sha256: str | None = None
    size: int | None = None
    data: bytes | None = None
    frames: list[Image.Image] | None = None
    pixels: torch.Tensor | None = None  # [frames, 3, H, W]
    embedding: np.ndarray | None = None  # [frames, d] float32
    status: ItemStatus = ItemStatus.OK
    error: str | None = None
    reason: str | None = None  # short machine-readable cause of an error or skip
    settled: bool = False  # decided before decoding (exact hash-list block)
    results: list[PolicyResult] = field(default_factory=list)
    decision: Action | None = None

    def fail(self, status: ItemStatus, reason: str, message: str) -> None:
        self.status, self.reason, self.error = status, reason, message
        self.data = self.frames = self.pixels = self.embedding = None


class Preparer:
    def __init__(self, pipeline: Pipeline, pool: ThreadPoolExecutor, *, force: bool = False) -> None:
        self.p = pipeline
        self.pool = pool
        self.force = force
        self.unchanged_total = 0
        self._unchanged_pending = 0
        self._lock = threading.Lock()
        clip = pipeline.clip
        self.draft_size = max(clip.image_size if clip else 0, 256 if pipeline.needs_images else 0) or 256

    def take_unchanged(self) -> int:
        """Unchanged items counted since the last call (for the progress bar)."""
        with self._lock:
            n, self._unchanged_pending = self._unchanged_pending, 0
            return n

    def _count_unchanged(self, n: int) -> None:
        with self._lock:
            self.unchanged_total += n
            self._unchanged_pending += n

    def _is_current(self, known: KnownItem | None) -> bool:
        """Already stored with every active policy's current version (or a recorded bad-image error)."""
        if self.force or known is None or known.status is ItemStatus.DELETED:
            return False  # a deleted object seen again was re-uploaded: score it anew
        if known.status is ItemStatus.SKIPPED:
            return True  # refused by a source rule (archive member): same fingerprint, same refusal
        if known.status is ItemStatus.ERROR:
            return known.sha256 is not None  # bytes were read: the error is about the image, not the fetch
        return all(
            known.policy_versions.get(name) == v and known.policy_models.get(name) == self.p.policy_models[name]
            for name, v in self.p.versions.items()
        )

    def prepare(self, batch: list[SourceItem]) -> list[PreparedItem]:
        timer = self.p.timer
        with timer.time("lookup"):
            known = self.p.store.known_items([i.uri for i in batch])
        out: list[PreparedItem] = []
        for item in batch:
            k = known.get(item.uri)
            if item.fingerprint and k and k.fingerprint == item.fingerprint and self._is_current(k):
                self._count_unchanged(1)
                continue
            prepared = PreparedItem(item)
            if item.skip_reason:
                prepared.fail(ItemStatus.SKIPPED, "skipped", item.skip_reason)
            out.append(prepared)

        list(self.pool.map(self._read, [p for p in out if p.status is ItemStatus.OK]))
        kept = []
        touched: dict[str, str] = {}
        for p in out:
            k = known.get(p.item.uri)
            if p.sha256 and k and k.sha256 == p.sha256 and self._is_current(k):
                # Same bytes: unchanged whatever the fingerprint says (a touched file). The new
                # fingerprint is stored so the next scan skips it without reading.
                if p.item.fingerprint and k.fingerprint != p.item.fingerprint:
                    touched[p.item.uri] = p.item.fingerprint
                self._count_unchanged(1)
                continue
            kept.append(p)
        if touched:
            with timer.time("store"):
                self.p.store.update_fingerprints(touched)
        self._byte_policies(kept)
        self._load_embeddings(kept)
        todo = [p for p in kept if p.status is ItemStatus.OK and not p.settled and self._needs_decode(p)]
        first: dict[str | None, PreparedItem] = {}
        twins = [(p, first.setdefault(p.sha256, p)) for p in todo]
        list(self.pool.map(self._decode, first.values()))
        for p, original in twins:  # identical bytes in one batch are decoded and embedded once
            if p is not original:
                p.frames = original.frames
                p.item.meta.update({k: original.item.meta.get(k) for k in _META_KEYS})
                if original.status is not ItemStatus.OK:
                    p.fail(original.status, original.reason or "error", original.error or "")
        for p in kept:
            p.data = None
        return kept

    def _read(self, p: PreparedItem) -> None:
        limit = self.p.settings.max_image_bytes
        if p.item.size is not None and p.item.size > limit:
            p.fail(ItemStatus.ERROR, "too_large", f"{p.item.size} bytes is over MODERATOR_MAX_IMAGE_BYTES={limit}")
            return
        with self.p.timer.time("read"):
            try:
                data = p.item.read()
            except Exception as exc:  # any source failure is this item's error; the batch goes on
                p.fail(ItemStatus.ERROR, "read_failed", f"could not read: {type(exc).__name__}: {exc}")
                return
        p.size = len(data)
        p.sha256 = hashlib.sha256(data).hexdigest()
        if len(data) > limit:
            p.fail(ItemStatus.ERROR, "too_large", f"{len(data)} bytes is over MODERATOR_MAX_IMAGE_BYTES={limit}")
            return
        p.data = data

    def _byte_policies(self, items: list[PreparedItem]) -> None:
        ready = [p for p in items if p.status is ItemStatus.OK]
        if not ready or not self.p.byte_policies:
            return
        batch = ScoringBatch(sha256=[p.sha256 or "" for p in ready], data=[p.data or b"" for p in ready])
        with self.p.timer.time("score_bytes"):
            for policy in self.p.byte_policies:
                for p, result in zip(ready, policy.evaluate(batch), strict=True):
                    p.results.append(result)
        for p in ready:
            # A known-bad exact match is final: no decoding, no model work for it.
            p.settled = any(r.action is Action.BLOCK for r in p.results)

    def _load_embeddings(self, items: list[PreparedItem]) -> None:
        if not self.p.needs_embeddings:
            return
        shas = sorted({p.sha256 for p in items if p.sha256 and p.status is ItemStatus.OK and not p.settled})
        if not shas:
            return
        with self.p.timer.time("lookup"):
            stored = self.p.store.load_embeddings(shas, self.p.model_id)
        for p in items:
            if p.sha256 in stored:
                p.embedding = stored[p.sha256].astype("float32")

    def _needs_decode(self, p: PreparedItem) -> bool:
        return self.p.needs_images or p.embedding is None

    def _decode(self, p: PreparedItem) -> None:
        settings = self.p.settings
        try:
            with self.p.timer.time("decode"):
                decoded = decode_image(
                    p.data or b"",
                    max_pixels=settings.max_image_pixels,
                    max_frames=settings.max_frames,
                    draft_size=self.draft_size,
                )
        except DecodeError as exc:
            p.fail(ItemStatus.ERROR, str(exc.reason), str(exc))
            return
        p.item.meta.update(_image_meta(decoded))
        if self.p.needs_images:
            p.frames = decoded.frames
        clip = self.p.clip
        if clip is not None and p.embedding is None:
            with self.p.timer.time("preprocess"):
                p.pixels = clip.preprocess_batch(decoded.frames)


_META_KEYS = ("format", "width", "height", "frames")


def _image_meta(decoded: Any) -> dict[str, Any]:
    return {"format": decoded.format, "width": decoded.width, "height": decoded.height, "frames": decoded.n_frames}

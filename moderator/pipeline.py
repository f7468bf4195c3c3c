"""The scan: source items -> the engine's one path to a verdict -> the store.

    source items -> skip unchanged (fingerprint) -> read bytes + sha256 -> byte policies (exact hash lists)
      -> skip unchanged (same bytes) -> decode + preprocess (pool) -> embed (batched, stored per sha256 + model)
      -> score every policy -> decide -> store (one transaction per batch)

The stages are moderator.engine's (prepare.Preparer, verdict.PolicySet.judge), shared with
`policy test`, `eval` and the API; what is the scan's own is here: which stored items are
unchanged, one store transaction per batch, the summary. Reading and decoding of batch k+1
overlap the model's work on batch k; every stage is timed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moderator import sources
from moderator.engine.compile import CompiledPolicy
from moderator.engine.prepare import PreparedItem
from moderator.engine.verdict import compile_policies
from moderator.models import load_clip, model_id_for
from moderator.policy.load import LoadedPolicy, PolicyError, load_policies
from moderator.settings import Settings
from moderator.stages import StageTimer
from moderator.store import ItemRecord, Store
from moderator.types import Action, ItemStatus, PolicySkipped, SourceItem

if TYPE_CHECKING:
    from moderator.models.clip import ClipModel
    from moderator.store import KnownItem

Progress = Callable[[int], None]
log = logging.getLogger("moderator.pipeline")


@dataclass
class ScanSummary:
    scanned: int = 0
    unchanged: int = 0
    errors: int = 0
    skipped: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    errors_by_reason: Counter[str] = field(default_factory=Counter)
    policies_run: list[str] = field(default_factory=list)
    policies_not_run: list[PolicySkipped] = field(default_factory=list)  # each with the reason it did not run
    random_weights: bool = False
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False  # stopped early (Ctrl-C): what is counted here is stored

    @property
    def total(self) -> int:
        return self.scanned + self.unchanged + self.errors + self.skipped

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "scanned": self.scanned,
            "unchanged": self.unchanged,
            "errors": self.errors,
            "skipped": self.skipped,
            "decisions": dict(self.decisions),
            "errors_by_reason": dict(self.errors_by_reason),
            "policies_run": self.policies_run,
            "policies_not_run": [{"policy": p.policy, "reason": p.reason} for p in self.policies_not_run],
            "random_weights": self.random_weights,
            "seconds": round(self.seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "interrupted": self.interrupted,
        }


class Pipeline:
    """Policies compiled once, the model loaded once; then any number of scans.

    `not_run` lists the policies that cannot run here (PolicySkipped: policy, reason); every
    ScanSummary repeats it as `policies_not_run`.
    """

    def __init__(self, settings: Settings, store: Store, policies: list[LoadedPolicy] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.loaded = policies if policies is not None else load_policies(settings.policy_paths())
        self._compile()
        self.model_id = model_id_for(settings)
        self.clip: ClipModel | None = load_clip(settings) if self.needs_embeddings else None
        self.timer = StageTimer()

    def _compile(self) -> None:
        self.policy_set = compile_policies(self.loaded, self.settings)
        self.policies: list[CompiledPolicy] = self.policy_set.policies
        self.not_run: list[PolicySkipped] = self.policy_set.not_run
        self.byte_policies = self.policy_set.byte_policies
        self.later_policies = self.policy_set.later_policies
        self.needs_embeddings = self.policy_set.needs.embeddings
        self.needs_images = self.policy_set.needs.images
        self.versions = self.policy_set.versions
        self.policy_models = self.policy_set.policy_models
        self._inputs = self.policy_set.input_signature()
        self._refused: tuple[tuple[str, int, int], ...] | None = None

    def refresh(self) -> None:
        """Compile again when a file the scorers read changed since (a hash list grew): a long-lived
        pipeline (a worker, the API) never scores against a list as it was. A list made invalid is
        logged once and the last valid compile keeps serving."""
        now = self.policy_set.input_signature()
        if not now or now in (self._inputs, self._refused):
            return
        try:
            self._compile()
        except PolicyError as exc:
            log.error("hash list changed but cannot be used, still serving the last valid version: %s", exc)
            self._refused = now

    @property
    def random_weights(self) -> bool:
        return bool(self.clip and self.clip.random_weights)

    def scan_targets(self, targets: list[str], **kwargs: object) -> ScanSummary:
        return self.scan(sources.iter_targets(targets, self.settings), **kwargs)  # type: ignore[arg-type]

    def scan(
        self,
        items: Iterable[SourceItem],
        *,
        job_id: str | None = None,
        progress: Progress | None = None,
        force: bool = False,
        stop: threading.Event | None = None,
        external_ids: Mapping[str, str] | None = None,
        on_stored: Callable[[list[PreparedItem]], None] | None = None,
    ) -> ScanSummary:
        """Score and store `items` batch by batch; `force` re-scores items whose stored results are current.

        `external_ids` (uri -> the caller's id, POST /api/moderate) are stored with the items in the
        same transaction; `on_stored` sees each stored batch (the items that were not unchanged).

        `stop` set (Ctrl-C) ends the scan after the batch in hand is stored (at once when it is
        set before the scan starts); the summary says `interrupted`.
        """
        self.refresh()
        summary = ScanSummary(
            policies_run=sorted(self.versions), policies_not_run=list(self.not_run), random_weights=self.random_weights
        )
        start = time.perf_counter()
        unchanged = Unchanged(self, force=force)
        if stop is not None and stop.is_set():
            summary.interrupted = True
            return summary
        batches = self.policy_set.judge(
            items, self.settings, store=self.store, skip=unchanged, timer=self.timer, clip=self._model
        )
        try:
            for batch in batches:
                self._store(batch, job_id, summary, external_ids)
                if on_stored:
                    on_stored(batch)
                if progress:
                    progress(len(batch) + unchanged.take())
                if stop is not None and stop.is_set():
                    summary.interrupted = True
                    break
        finally:
            batches.close()
        summary.unchanged = unchanged.total
        summary.seconds = time.perf_counter() - start
        summary.stage_seconds = self.timer.snapshot()
        return summary

    def _model(self) -> ClipModel:
        if self.clip is None:
            self.clip = load_clip(self.settings)
        return self.clip

    def _store(
        self,
        batch: list[PreparedItem],
        job_id: str | None,
        summary: ScanSummary,
        external_ids: Mapping[str, str] | None = None,
    ) -> None:
        records = [
            ItemRecord(
                uri=p.item.uri,
                sha256=p.sha256,
                size=p.size,
                fingerprint=p.item.fingerprint,
                status=p.status,
                error=p.error,
                meta=p.item.meta,
                decision=p.decision if p.ok else None,
                results=p.results,
                job_id=job_id,
                error_reason=None if p.ok else p.reason,
                external_id=(external_ids or {}).get(p.item.uri),
            )
            for p in batch
        ]
        with self.timer.time("store"):
            self.store.save_items(records)
        for p in batch:
            if p.ok:
                summary.scanned += 1
                summary.decisions[(p.decision or Action.ALLOW).value] += 1
            elif p.status is ItemStatus.SKIPPED:
                summary.skipped += 1
                summary.errors_by_reason[p.reason or "skipped"] += 1
            else:
                summary.errors += 1
                summary.errors_by_reason[p.reason or "error"] += 1


class Unchanged:
    """The scan's skip-unchanged: an item stored from the same bytes with every policy's current
    version and model needs no work. One store query per batch, no per-item round trips.

    An item an exact hash list blocks is decided by the byte policies alone (the others never
    run on it), so it is unchanged when those are current. Hash-list content is part of the
    scorer's model id: a list that changed makes its results stale.
    """

    def __init__(self, pipeline: Pipeline, *, force: bool) -> None:
        self.p = pipeline
        self.force = force
        self.byte_policies = [p.name for p in pipeline.byte_policies]
        self.total = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._known: dict[str, KnownItem] = {}

    def take(self) -> int:
        """Unchanged items counted since the last call (for the progress bar)."""
        with self._lock:
            n, self._pending = self._pending, 0
            return n

    def _count(self) -> None:
        with self._lock:
            self.total += 1
            self._pending += 1

    def before_read(self, batch: list[SourceItem]) -> list[SourceItem]:
        """Items whose fingerprint (mtime+size, ETag) and results are current are not even read."""
        with self.p.timer.time("lookup"):
            self._known = self.p.store.known_items([i.uri for i in batch])
        out = []
        for item in batch:
            k = self._known.get(item.uri)
            if item.fingerprint and k and k.fingerprint == item.fingerprint and self._current(k, settled=False):
                self._count()
                continue
            out.append(item)
        return out

    def after_read(self, items: list[PreparedItem]) -> list[PreparedItem]:
        """Same bytes: unchanged whatever the fingerprint says (a touched file); its new fingerprint is
        stored so the next scan skips it without reading."""
        kept: list[PreparedItem] = []
        touched: dict[str, str] = {}
        for p in items:
            k = self._known.get(p.item.uri)
            if p.sha256 and k and k.sha256 == p.sha256 and self._current(k, settled=p.settled):
                if p.item.fingerprint and k.fingerprint != p.item.fingerprint:
                    touched[p.item.uri] = p.item.fingerprint
                self._count()
                continue
            kept.append(p)
        if touched:
            with self.p.timer.time("store"):
                self.p.store.update_fingerprints(touched)
        return kept

    def _current(self, known: KnownItem, *, settled: bool) -> bool:
        """Stored with the current version and model of every policy that decides it (or a recorded bad-image error)."""
        if self.force or known.status is ItemStatus.DELETED:
            return False  # a deleted object seen again was re-uploaded: score it anew
        if known.status is ItemStatus.SKIPPED:
            return True  # refused by a source rule (archive member): same fingerprint, same refusal
        if known.status is ItemStatus.ERROR:
            return known.sha256 is not None  # bytes were read: the error is about the image, not the fetch
        deciding = self.byte_policies if settled else list(self.p.versions)
        return all(
            known.policy_versions.get(name) == self.p.versions[name]
            and known.policy_models.get(name) == self.p.policy_models[name]
            for name in deciding
        )

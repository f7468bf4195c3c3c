"""The data flow, top to bottom.

    source items -> read bytes + sha256 -> skip unchanged -> byte scorers (exact hash lists)
      -> decode + preprocess (threads) -> embed (batched, stored per sha256 + model)
      -> score every policy -> decide -> store (one transaction per batch)

Reading and decoding of batch k+1 run in a background thread and a thread pool
while the model works on batch k (stages.prefetch). Every stage is timed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from moderator import sources
from moderator.decide import apply_second_opinions, item_decision, second_opinion_rules
from moderator.models import load_clip, model_id_for
from moderator.engine.compile import CompiledPolicy, compile_policy
from moderator.policy.load import LoadedPolicy, load_policies
from moderator.engine.prepare import PreparedItem, Preparer
from moderator.scorers import ScorerContext, ScorerInput, ScoringBatch
from moderator.settings import Settings
from moderator.stages import StageTimer, chunked, prefetch, same, timed
from moderator.store import ItemRecord, Store
from moderator.types import Action, ItemStatus, PolicyResult, PolicySkipped, SourceItem

Progress = Callable[[int], None]


@dataclass
class ScanSummary:
    scanned: int = 0
    unchanged: int = 0
    errors: int = 0
    skipped: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    errors_by_reason: Counter[str] = field(default_factory=Counter)
    policies_run: list[str] = field(default_factory=list)
    policies_not_run: list[PolicySkipped] = field(default_factory=list)
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


def allow_pixels_up_to(limit: int) -> None:
    """Let Pillow open images up to the configured limit (decode refuses above it).

    Pillow's bomb limit is a process global: it is raised here, once, before decode threads
    start, and never lowered (decode_image checks the setting itself).
    """
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


class Pipeline:
    """Policies compiled once, the model loaded once (lazily); then any number of scans."""

    def __init__(self, settings: Settings, store: Store, policies: list[LoadedPolicy] | None = None) -> None:
        self.settings = settings
        self.store = store
        loaded = policies if policies is not None else load_policies(settings.policy_paths())
        ctx = ScorerContext(settings=settings, clip=partial(load_clip, settings))
        self.policies: list[CompiledPolicy] = []
        self.not_run: list[PolicySkipped] = []
        for policy in loaded:
            ctx.policy_file = policy.path
            compiled = compile_policy(policy, ctx)
            if isinstance(compiled, PolicySkipped):
                self.not_run.append(compiled)
            else:
                self.policies.append(compiled)
        self.byte_policies = [p for p in self.policies if p.scorer.input is ScorerInput.BYTES]
        self.later_policies = [p for p in self.policies if p.scorer.input is not ScorerInput.BYTES]
        self.needs_embeddings = any(p.scorer.input is ScorerInput.EMBEDDING for p in self.policies)
        self.needs_images = any(p.scorer.input is ScorerInput.IMAGE for p in self.policies)
        self.versions = {p.loaded.spec.name: p.loaded.version for p in self.policies}
        self.policy_models = {p.loaded.spec.name: p.scorer.model_id for p in self.policies}
        self.model_id = model_id_for(settings)
        self.second_opinion_rules = second_opinion_rules(p.loaded.spec for p in self.policies)
        self.clip = load_clip(settings) if self.needs_embeddings else None
        self.timer = StageTimer()
        allow_pixels_up_to(settings.max_image_pixels)

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
    ) -> ScanSummary:
        """Score and store `items` batch by batch.

        Three stages run at once: the reader (a thread pulling batches from the source:
        listing, archive streams), the mapper (a thread preparing the next batch: bytes,
        hashes, skip-unchanged, decode and preprocess in the pool) and this thread (model,
        scoring, one store transaction per batch). `stop` set (Ctrl-C) ends the scan
        after the batch in hand is stored; the summary says `interrupted`.
        """
        summary = ScanSummary(
            policies_run=sorted(self.versions), policies_not_run=list(self.not_run), random_weights=self.random_weights
        )
        start = time.perf_counter()
        with ThreadPoolExecutor(self.decode_workers(), thread_name_prefix="moderator-decode") as pool:
            preparer = Preparer(self, pool, force=force)
            reader = prefetch(timed(chunked(items, self.settings.batch_size), self.timer, "source"), same)
            batches = prefetch(reader, preparer.prepare)
            try:
                for batch in batches:
                    self._embed(batch)
                    self._score(batch)
                    self._store(batch, job_id, summary)
                    if progress:
                        progress(len(batch) + preparer.take_unchanged())
                    if stop is not None and stop.is_set():
                        summary.interrupted = True
                        break
            finally:
                batches.close()
        summary.unchanged = preparer.unchanged_total
        summary.seconds = time.perf_counter() - start
        summary.stage_seconds = self.timer.snapshot()
        return summary

    def decode_workers(self) -> int:
        """Decode threads: one per core. The model's own torch threads use the cores too; more decoders would
        only queue behind them (the prefetch depth, not the thread count, is what hides decoding)."""
        return self.settings.decode_workers or max(2, os.cpu_count() or 1)

    def _embed(self, batch: list[PreparedItem]) -> None:
        todo = [p for p in batch if p.pixels is not None and p.embedding is None]
        if not todo or self.clip is None:
            return
        import numpy as np
        import torch

        with self.timer.time("embed"):
            pixels = torch.cat([p.pixels for p in todo if p.pixels is not None])
            size = self.settings.batch_size
            parts = [self.clip.encode_images(pixels[i : i + size]) for i in range(0, len(pixels), size)]
            features = np.concatenate(parts)
        new: dict[str, np.ndarray] = {}
        row = 0
        for p in todo:
            n = len(p.pixels) if p.pixels is not None else 0
            # Scored exactly as stored (float16), so a later re-score gives the same answer.
            stored = features[row : row + n].astype(np.float16)
            row += n
            p.embedding = stored.astype(np.float32)
            p.pixels = None
            if p.sha256:
                new[p.sha256] = stored
        with self.timer.time("store_embeddings"):
            self.store.save_embeddings(new, self.model_id)
        for p in batch:  # identical bytes in one batch are embedded once
            if p.embedding is None and p.sha256 in new and p.status is ItemStatus.OK:
                p.embedding = new[p.sha256].astype(np.float32)

    def _score(self, batch: list[PreparedItem]) -> None:
        ready = [p for p in batch if p.status is ItemStatus.OK and not p.settled]
        if ready and self.later_policies:
            scoring = ScoringBatch(
                sha256=[p.sha256 or "" for p in ready],
                frames=[p.frames or [] for p in ready] if self.needs_images else None,
                embeddings=[p.embedding for p in ready] if self.needs_embeddings else None,  # type: ignore[misc]
            )
            with self.timer.time("score"):
                for policy in self.later_policies:
                    if policy.scorer.input is ScorerInput.EMBEDDING and any(p.embedding is None for p in ready):
                        continue  # unreachable unless the model failed; guarded so nothing is misattributed
                    for p, result in zip(ready, policy.evaluate(scoring), strict=True):
                        p.results.append(result)
        for p in batch:
            p.frames = None
            if p.status is ItemStatus.OK:
                p.results = self._second_opinions(p.results)
                p.decision = item_decision(p.results)

    def _second_opinions(self, results: list[PolicyResult]) -> list[PolicyResult]:
        return apply_second_opinions(results, self.second_opinion_rules)

    def _store(self, batch: list[PreparedItem], job_id: str | None, summary: ScanSummary) -> None:
        records = [
            ItemRecord(
                uri=p.item.uri,
                sha256=p.sha256,
                size=p.size,
                fingerprint=p.item.fingerprint,
                status=p.status,
                error=p.error,
                meta=p.item.meta,
                decision=p.decision if p.status is ItemStatus.OK else None,
                results=p.results,
                job_id=job_id,
            )
            for p in batch
        ]
        with self.timer.time("store"):
            self.store.save_items(records)
        for p in batch:
            if p.status is ItemStatus.OK:
                summary.scanned += 1
                summary.decisions[(p.decision or Action.ALLOW).value] += 1
            elif p.status is ItemStatus.SKIPPED:
                summary.skipped += 1
                summary.errors_by_reason[p.reason or "skipped"] += 1
            else:
                summary.errors += 1
                summary.errors_by_reason[p.reason or "error"] += 1

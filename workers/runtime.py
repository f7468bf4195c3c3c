"""What one worker process keeps between batches: settings, store, pipelines (model loaded once).

Pipelines are built lazily in the process that scores (a prefork child), so the parent never
touches CUDA before forking. Policy files are checked for changes (mtime, size, file list)
before every batch: a valid edit swaps in a new pipeline (the model stays loaded; text
embeddings are cached per policy version), an invalid one is logged with its file and line
and the last valid version keeps serving.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moderator.settings import Settings

if TYPE_CHECKING:
    from moderator.pipeline import Pipeline, ScanSummary
    from moderator.policy.load import LoadedPolicy
    from moderator.store import Store

log = logging.getLogger("moderator.worker")
Signature = tuple[tuple[str, int, int], ...]


@cache
def settings() -> Settings:
    return Settings()


@cache
def store() -> Store:
    from moderator.store import Store

    return Store(settings().database_url)


def reset_store() -> None:
    """Drop the engine after a database error, so the next try starts from fresh connections."""
    if store.cache_info().currsize:
        try:
            store().close()
        finally:
            store.cache_clear()


@cache
def batch_log() -> logging.Logger:
    """One JSON object per line on the real stderr (Celery redirects sys.stderr into its own logger)."""
    logger = logging.getLogger("moderator.worker.batches")
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def log_batch(**fields: Any) -> None:
    """One line per delivery; the counts are always there (0 for a batch split, or dropped as a copy)."""
    counts = {"scanned": 0, "unchanged": 0, "errors": 0, "skipped": 0}
    batch_log().info(json.dumps({"ts": round(time.time(), 3), "event": "batch", **counts, **fields}, default=str))


def signature(paths: list[Path]) -> Signature:
    """What changes when a policy file is edited, added or removed (missing paths included)."""
    from moderator.policy.load import POLICY_SUFFIXES

    found: list[tuple[str, int, int]] = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.suffix in POLICY_SUFFIXES) if path.is_dir() else [path]
        for f in files:
            try:
                st = f.stat()
                found.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                found.append((str(f), -1, -1))
    return tuple(found)


@dataclass
class _Entry:
    signature: Signature
    pipeline: Pipeline
    rejected: Signature | None = None  # last invalid state, logged once


def not_run_text(pipeline: Pipeline) -> str:
    """One line per cause: "nsfw, violence: <why>; ..." (five CLIP policies without weights make one)."""
    by_reason: dict[str, list[str]] = {}
    for skipped in pipeline.not_run:
        by_reason.setdefault(skipped.reason, []).append(skipped.policy)
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())


class PoliciesUnavailable(Exception):
    """No valid policy can run in this worker: its batches cannot be scored (the job fails, saying why)."""


class Pipelines:
    """One pipeline per policy selection (a job's --policy), rebuilt when its files change."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._lock = threading.Lock()

    def get(self, policies: list[str]) -> Pipeline:
        key = tuple(policies)
        paths = self._paths(policies)
        sig = signature(paths)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (sig == entry.signature or sig == entry.rejected):
                return entry.pipeline
            try:
                loaded = self._load(policies, paths)
            except Exception as exc:
                if entry is None:  # nothing valid to fall back on: the batch fails (and the job with it)
                    raise PoliciesUnavailable(f"invalid policies: {exc}") from exc
                log.error("policy reload refused, still serving the last valid version: %s", exc)
                entry.rejected = sig
                return entry.pipeline
            pipeline = self._build(loaded)
            if entry is not None:
                log.info("policies reloaded: %s", ", ".join(f"{p.name}@{p.version}" for p in loaded))
            self._entries[key] = _Entry(sig, pipeline)
            return pipeline

    @staticmethod
    def _paths(policies: list[str]) -> list[Path]:
        files = [Path(p) for p in policies if Path(p).is_absolute()]
        names = [p for p in policies if not Path(p).is_absolute()]
        return (settings().policy_paths() if names or not files else []) + files

    @staticmethod
    def _load(policies: list[str], paths: list[Path]) -> list[LoadedPolicy]:
        from moderator.policy.load import PolicyError, load_policies

        loaded = load_policies(paths)
        names = {p for p in policies if not Path(p).is_absolute()}
        files = {Path(p) for p in policies if Path(p).is_absolute()}
        if names or files:
            # Names pick among the configured policies; files are taken whole (a folder: all of it).
            chosen = [p for p in loaded if p.name in names or any(f == p.path or f in p.path.parents for f in files)]
            missing = names - {p.name for p in chosen}
            if missing:
                raise PolicyError(
                    paths[0] if paths else ".", f"no configured policy named {', '.join(sorted(missing))}"
                )
            loaded = chosen
        if not loaded:
            raise PolicyError(paths[0] if paths else ".", "no policy files found")
        return loaded

    @staticmethod
    def _build(loaded: list[LoadedPolicy]) -> Pipeline:
        from moderator.errors import ScorerUnavailable
        from moderator.pipeline import Pipeline

        try:
            pipeline = Pipeline(settings(), store(), loaded)
        except ScorerUnavailable as exc:
            raise PoliciesUnavailable(str(exc)) from exc
        if not pipeline.policies:
            raise PoliciesUnavailable(f"none of the policies can run in this worker ({not_run_text(pipeline)})")
        if pipeline.not_run:
            # Said once per pipeline here, and recorded in every job it scores (jobs, the API).
            log.warning("policies not run in this worker: %s", not_run_text(pipeline))
        return pipeline


pipelines = Pipelines()


class TransientReadError(Exception):
    """An item could not be fetched for a reason that may pass (connection reset, S3 5xx)."""


def scan(job_id: str, refs: list[dict[str, Any]], policies: list[str]) -> ScanSummary:
    """Score a batch of item references; raise TransientReadError when a fetch failed transiently.

    The pipeline records a failed fetch as an item error and goes on; for a transient cause the
    batch is retried instead, and the retry re-reads exactly those items (an error without a
    sha256 is never taken as current).
    """
    from moderator.queue import ItemRef
    from workers.errors import is_transient

    cfg = settings()
    transient: list[BaseException] = []

    def watched(ref: ItemRef) -> Any:
        item = ref.source_item(cfg)

        def read() -> bytes:
            try:
                return item.read()
            except Exception as exc:
                if is_transient(exc):
                    transient.append(exc)
                raise

        return replace(item, read=read)

    items = [watched(ItemRef.model_validate(r)) for r in refs]
    summary = pipelines.get(policies).scan(items, job_id=job_id)
    if transient:
        first = transient[0]
        raise TransientReadError(f"{len(transient)} item(s) could not be fetched: {type(first).__name__}: {first}")
    return summary

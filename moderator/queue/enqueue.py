"""Jobs on the queue, producer side: list the items of some targets, send them to the workers by reference.

The enqueuer never reads an image: sources list items (streaming, page by page for S3) and
each batch of `queue_batch_size` references (uri, size, fingerprint, source metadata) becomes
one task, sent by name (no worker code here); the workers fetch the bytes through the same
source plugins. The job row (state, total, counts) and its batch ledger are the progress
record both sides share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from moderator import sources
from moderator.queue.config import TASK_NAME, producer_app
from moderator.settings import Settings
from moderator.stages import chunked
from moderator.types import SourceItem

if TYPE_CHECKING:
    from celery import Celery

    from moderator.store import NewBatch


class EnqueueError(ValueError):
    """Targets or policies that cannot make a job (the API answers 422 on ValueError)."""


class ItemRef(BaseModel):
    """One item as a task carries it: never its bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    size: int | None = None
    fingerprint: str | None = None
    meta: dict[str, Any] = {}
    skip_reason: str | None = None

    @classmethod
    def of(cls, item: SourceItem) -> ItemRef:
        return cls(
            uri=item.uri, size=item.size, fingerprint=item.fingerprint, meta=item.meta, skip_reason=item.skip_reason
        )

    def source_item(self, settings: Settings) -> SourceItem:
        """Back to a SourceItem whose read() fetches through the uri's source plugin."""
        return SourceItem(
            uri=self.uri,
            read=partial(sources.read_uri, self.uri, settings),
            size=self.size,
            fingerprint=self.fingerprint,
            meta=dict(self.meta),
            skip_reason=self.skip_reason,
        )


def check_policies(policies: list[str] | None, settings: Settings) -> list[str]:
    """Policy files/folders, or names among the configured policies; refused here rather than in every worker."""
    from moderator.policy.load import PolicyError, load_policies

    if not policies:
        return []
    paths = [p for p in policies if Path(p).exists()]
    names = [p for p in policies if not Path(p).exists()]
    try:
        if paths:
            load_policies(paths)
        if names:
            known = {p.name for p in load_policies(settings.policy_paths())}
            unknown = sorted(set(names) - known)
            if unknown:
                raise EnqueueError(
                    f"unknown policy {', '.join(unknown)}: not a file, and not among the configured "
                    f"policies ({', '.join(sorted(known)) or 'none'})"
                )
    except PolicyError as exc:
        raise EnqueueError(f"invalid policy: {exc}") from None
    # Files by absolute path: workers share the filesystem (a volume) with the enqueuer.
    return [str(Path(p).resolve()) if Path(p).exists() else p for p in policies]


def task_payload(job_id: str, refs: Iterable[ItemRef | dict[str, Any]], policies: list[str]) -> dict[str, Any]:
    items = [r.model_dump(exclude_defaults=True) if isinstance(r, ItemRef) else r for r in refs]
    return {"job_id": job_id, "items": items, "policies": policies}


def publish(app: Celery, batch: NewBatch, policies: list[str], producer: Any = None) -> None:
    """Send one ledgered batch by task name (the task id is the batch id: the ledger's key)."""
    app.send_task(
        TASK_NAME,
        kwargs=task_payload(batch.job_id, batch.items, policies),
        task_id=batch.id,
        queue=batch.queue,
        producer=producer,
    )


def iter_refs(targets: list[str], settings: Settings) -> Iterator[ItemRef]:
    for item in sources.iter_targets(targets, settings):
        yield ItemRef.of(item)


def enqueue_targets(targets: list[str], settings: Settings, policies: list[str] | None = None) -> str:
    """Create a job for `targets`, queue its batches and return the job id.

    `policies`: files or folders (absolute paths reach the workers), or names of configured
    policies; None or empty: the workers' configured policies. Raises EnqueueError (a
    ValueError) for a target no source claims or an invalid policy, before any job exists.
    Each batch is written to the job's ledger before it is sent, so a message the broker
    loses is found and sent again (moderator.queue.repair). The total is set once the
    listing ends (it streams); a listing or broker failure half-way marks the job failed and
    re-raises.
    """
    from moderator.store import JobBatches, JobState, NewBatch, Store

    if not targets:
        raise EnqueueError("nothing to enqueue: give at least one path or URI")
    for target in targets:
        try:
            sources.resolve(target)
        except ValueError as exc:
            raise EnqueueError(str(exc)) from None
    chosen = check_policies(policies, settings)
    app = producer_app(settings)
    store = Store(settings.database_url)
    try:
        job_id = store.create_job(targets, chosen)
        ledger = JobBatches(store)
        total = 0
        try:
            with app.producer_or_acquire() as producer:
                for seq, batch in enumerate(chunked(iter_refs(targets, settings), settings.queue_batch_size)):
                    refs = [r.model_dump(exclude_defaults=True) for r in batch]
                    new = NewBatch(f"{job_id}:{seq}", job_id, settings.queue_name, refs)
                    ledger.add([new])
                    publish(app, new, chosen, producer)
                    total += len(batch)
        except BaseException as exc:
            message = f"enqueue stopped after {total} items: {type(exc).__name__}: {exc}"
            store.update_job(job_id, state=JobState.FAILED, total=total, message=message)
            raise
        store.update_job(job_id, total=total)
        store.advance_job(job_id)  # the workers may have finished before the total was known
        return job_id
    finally:
        store.close()

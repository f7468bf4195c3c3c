"""Storage: items, embeddings, per-policy results and jobs in SQLite or PostgreSQL.

tables.py      every table (scan results, review UI, S3 event state) on one Base
engine.py      engines, where a store is and whether it exists, migrations
results.py     a result's stored text, the one results upsert, the one decision refresh
repository.py  Store: items, embeddings, jobs, counts (what scans and workers call)
jobs.py        job rows;  batches.py: the batch ledger of queued jobs
export.py      streaming export rows
bulk.py        whole-store reads and writes (rescore, policy diff, search)
outbox.py      decision events, written in the transaction that changes the decision
deliveries.py  webhook endpoints and the delivery ledger of those events (leased claims)
"""

from moderator.store.batches import BatchState, Delivery, JobBatches, NewBatch, QueuedBatch
from moderator.store.engine import StoreNotFound
from moderator.store.export import ExportFilters, ExportRow
from moderator.store.jobs import JobInfo
from moderator.store.repository import ItemRecord, KnownItem, Store, StoreCounts
from moderator.store.tables import JobState

__all__ = [
    "BatchState",
    "Delivery",
    "JobBatches",
    "NewBatch",
    "QueuedBatch",
    "ExportFilters",
    "ExportRow",
    "ItemRecord",
    "JobInfo",
    "JobState",
    "KnownItem",
    "Store",
    "StoreCounts",
    "StoreNotFound",
]

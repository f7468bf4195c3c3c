"""Storage: items, embeddings, per-policy results and jobs in SQLite or PostgreSQL."""

from moderator.store.records import ExportFilters, ExportRow, ItemRecord, JobInfo, KnownItem, StoreCounts
from moderator.store.repository import Store
from moderator.store.tables import JobState

__all__ = ["ExportFilters", "ExportRow", "ItemRecord", "JobInfo", "JobState", "KnownItem", "Store", "StoreCounts"]

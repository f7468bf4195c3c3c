"""Source plugins: they yield SourceItems; plugins register under the ``moderator.sources`` entry point.

Only source plugins live here (S3 event notifications are moderator.s3events).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from moderator import plugins
from moderator.settings import Settings
from moderator.types import SourceItem

GROUP = "moderator.sources"


@runtime_checkable
class Source(Protocol):
    """A kind of place images come from (folder, archive, S3 prefix...)."""

    name: str
    priority: int  # higher is asked first: s3 and archives before plain files

    def claims(self, target: str) -> bool:
        """True when this source handles `target` (a path, URI or prefix)."""

    def iter_items(self, target: str, settings: Settings) -> Iterator[SourceItem]:
        """Every item under `target`, streamed (never the whole listing in memory)."""

    def count(self, target: str, settings: Settings) -> int | None:
        """How many items iter_items(target) yields, where that is cheap to know (a progress bar's total);
        None where it is not (an S3 prefix, a compressed tar: counting would be the listing itself)."""

    def read(self, uri: str, settings: Settings) -> bytes:
        """The bytes of one item by the uri it was yielded with (workers fetch by reference)."""


def resolve(target: str) -> Source:
    """The source that claims `target`, by priority."""
    found = sorted(plugins.all_plugins(GROUP).values(), key=lambda s: -s.priority)
    for source in found:
        if source.claims(target):
            return source
    raise ValueError(f"no source can read {target!r}: not an existing file or folder, nor a URI a source plugin knows")


def iter_targets(targets: list[str], settings: Settings) -> Iterator[SourceItem]:
    for target in targets:
        yield from resolve(target).iter_items(target, settings)


def count_targets(targets: list[str], settings: Settings) -> int | None:
    """Items a scan of `targets` will see, where every source can count cheaply; else None."""
    total = 0
    for target in targets:
        n = resolve(target).count(target, settings)
        if n is None:
            return None
        total += n
    return total


def read_uri(uri: str, settings: Settings) -> bytes:
    return resolve(uri).read(uri, settings)

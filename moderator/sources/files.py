"""Local files and folders (recursive), the built-in `files` source."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from moderator.settings import Settings
from moderator.types import SourceItem

# Names that are never images worth reading; everything else is tried (decode decides).
_IGNORED = {".DS_Store", "Thumbs.db", "desktop.ini"}


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def file_item(path: Path) -> SourceItem:
    st = path.stat()
    uri = str(path.resolve())
    return SourceItem(
        uri=uri,
        read=partial(_read, uri),
        size=st.st_size,
        fingerprint=f"{st.st_size}:{st.st_mtime_ns}",
        meta={"mtime_ns": st.st_mtime_ns},
    )


class FileSource:
    name = "files"
    priority = 0

    def claims(self, target: str) -> bool:
        return "://" not in target and Path(target).exists()

    def iter_items(self, target: str, settings: Settings) -> Iterator[SourceItem]:
        root = Path(target)
        if root.is_file():
            yield file_item(root)
            return
        # os.walk streams; sorted per folder so scans are reproducible. Symlinked folders are not followed.
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if name in _IGNORED or name.startswith("._") or not path.is_file():
                    continue
                yield file_item(path)

    def count(self, target: str, settings: Settings) -> int | None:
        """How many items iter_items will yield: a progress bar's total."""
        return sum(1 for _ in self.iter_items(target, settings))

    def read(self, uri: str, settings: Settings) -> bytes:
        return _read(uri)


source = FileSource()

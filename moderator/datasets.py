"""Labelled image sets for `moderator eval` and `moderator probe train --data`.

A dataset is either a folder with one subfolder per class (images anywhere below
it), or a CSV file of ``path,label`` rows (an optional header row ``path,label``;
relative paths are relative to the CSV file).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says what and where."""


@dataclass(frozen=True)
class Dataset:
    paths: list[Path]
    labels: list[str]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def __len__(self) -> int:
        return len(self.paths)


def load_dataset(path: Path | str) -> Dataset:
    path = Path(path)
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        return _from_csv(path)
    raise DatasetError(f"{path}: no such folder or CSV file")


def _from_folder(root: Path) -> Dataset:
    paths: list[Path] = []
    labels: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
                paths.append(file)
                labels.append(folder.name)
    if not paths:
        raise DatasetError(f"{root}: no images found; expected one subfolder per class with images in it")
    return Dataset(paths, labels)


def _from_csv(file: Path) -> Dataset:
    paths: list[Path] = []
    labels: list[str] = []
    missing: list[str] = []
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{file}: cannot read as UTF-8 CSV: {exc}") from None
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"{file}:{n}: expected two columns path,label; got {row!r}")
        image = Path(row[0].strip())
        image = image if image.is_absolute() else file.parent / image
        if not image.is_file():
            missing.append(f"{file}:{n}: {image}")
        paths.append(image)
        labels.append(row[1].strip())
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DatasetError("no such image: " + "; ".join(missing[:3]) + more)
    if not paths:
        raise DatasetError(f"{file}: no rows; expected path,label lines")
    return Dataset(paths, labels)

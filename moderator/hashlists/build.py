"""Building lists from images (`moderator hashlist add`) and where a list NAME lives."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from moderator.hashlists.entries import HashEntry, HashKind, append_entries
from moderator.hashlists.signals import exact_hex, pdq_of, phash_hex
from moderator.settings import SHIPPED_POLICIES, Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic"}
DEFAULT_ADD_KINDS = (HashKind.SHA256, HashKind.PDQ)


def resolve_list_path(name: str, settings: Settings) -> Path:
    """Where `hashlist add|import --list NAME` writes. Anything with a folder or a suffix is a path. A
    bare NAME is `<first policy folder>/lists/NAME.txt` for policies of your own (--policy,
    MODERATOR_POLICIES), where they look; for the shipped policies it is
    `<hash_lists_dir>/NAME.txt`, which they read too: nothing is written into the package."""
    if "/" in name or "\\" in name or Path(name).suffix:
        return Path(name)
    first = settings.policy_paths()[0]
    folder = first if first.is_dir() or not first.suffix else first.parent
    if folder.resolve().is_relative_to(SHIPPED_POLICIES.resolve()):
        return settings.hash_lists_dir / f"{name}.txt"
    return folder / "lists" / f"{name}.txt"


def iter_image_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for image suffixes, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


@dataclass
class AddReport:
    added: int = 0  # lines written
    present: int = 0  # hashes already in the list
    errors: list[str] = field(default_factory=list)  # "path: reason", files that could not be hashed
    low_quality: list[str] = field(default_factory=list)  # images whose PDQ is too unreliable to list


def image_entries(
    data: bytes, settings: Settings, kinds: Sequence[HashKind] = DEFAULT_ADD_KINDS, label: str = ""
) -> tuple[list[HashEntry], int | None]:
    """Entries of the given kinds for an image's bytes, and its PDQ quality (None: PDQ not asked for).
    Perceptual hashes are of the first frame as the pipeline decodes it; a PDQ below the quality
    cut-off is left out. Raises DecodeError (perceptual kinds only)."""
    entries = [HashEntry(k, exact_hex(k, data), label) for k in kinds if k.exact]
    quality = None
    if any(not k.exact for k in kinds):
        from moderator.decode import decode_image  # raises DecodeError

        frame = decode_image(data, max_pixels=settings.max_image_pixels, max_frames=1).frames[0]
        if HashKind.PDQ in kinds:
            pdq = pdq_of(frame)
            quality = pdq.quality
            if pdq.quality >= settings.hashlist_pdq_min_quality:
                entries.append(HashEntry(HashKind.PDQ, pdq.hex, label))
        if HashKind.PHASH in kinds:
            entries.append(HashEntry(HashKind.PHASH, phash_hex(frame), label))
    return entries, quality


def add_images(
    list_path: Path,
    files: Iterable[Path],
    settings: Settings,
    label: str = "",
    kinds: Sequence[HashKind] = DEFAULT_ADD_KINDS,
) -> AddReport:
    """Append a line per kind for each image to the list (created if missing); hashes already
    present are not repeated. Default kinds: sha256 (exact) and pdq (perceptual)."""
    from moderator.decode import DecodeError

    report = AddReport()
    found: list[HashEntry] = []
    for path in files:
        try:
            entries, quality = image_entries(path.read_bytes(), settings, kinds, " ".join((label or path.name).split()))
        except (OSError, DecodeError) as e:
            report.errors.append(f"{path}: {e}")
            continue
        if quality is not None and quality < settings.hashlist_pdq_min_quality:
            report.low_quality.append(f"{path}: PDQ quality {quality} < {settings.hashlist_pdq_min_quality}")
        found.extend(entries)
    report.added, report.present = append_entries(list_path, found)
    return report

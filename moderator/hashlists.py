"""Known-bad hash lists: the file format, matching helpers, and building lists from images.

A list is plain text so it can be exchanged between teams, one hash per line:

    sha256:<64 hex digits>   # optional label
    phash:<16 hex digits>    # perceptual hash (imagehash.phash, 64 bits) of the first frame

Blank lines and lines starting with ``#`` are ignored. ``moderator hashlist add``
writes both lines for each image; the ``hashlist`` scorer reads them.

Where lists live: a policy names its lists relative to its file (``lists/known_bad.txt``);
the lists you add to live in your data directory (``MODERATOR_HASH_LISTS_DIR``), never in
the installed package, and a policy's ``lists/NAME.txt`` reads ``NAME.txt`` from there too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from moderator.settings import SHIPPED_POLICIES, Settings

PHASH_BITS = 64  # imagehash.phash with hash_size=8
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic"}
_LINE = re.compile(r"^(?P<kind>sha256|phash):(?P<hex>[0-9a-fA-F]+)\s*(?:#\s*(?P<label>.*))?$")
_HEX_LEN = {"sha256": 64, "phash": PHASH_BITS // 4}


class HashKind(StrEnum):
    SHA256 = "sha256"
    PHASH = "phash"


class HashListError(ValueError):
    """A list file that cannot be read or has a malformed line (message names file and line)."""


@dataclass(frozen=True)
class HashEntry:
    kind: HashKind
    value: str  # lower-case hex
    label: str
    line: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" + (f" ({self.label})" if self.label else "")


@dataclass(frozen=True)
class HashList:
    name: str  # how the policy names it (the path as written), used in evidence
    entries: list[HashEntry]

    def of_kind(self, kind: HashKind) -> list[HashEntry]:
        return [e for e in self.entries if e.kind is kind]


def parse_hash_list(text: str, source: str) -> list[HashEntry]:
    """Entries of a list file's text; raises HashListError naming `source` and the line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise HashListError(f"{source}:{number}: expected 'sha256:<hex>' or 'phash:<hex>', got {line[:80]!r}")
        kind = HashKind(m["kind"])
        if len(m["hex"]) != _HEX_LEN[kind]:
            want, got = _HEX_LEN[kind], len(m["hex"])
            raise HashListError(f"{source}:{number}: a {kind} hash has {want} hex digits, got {got}")
        entries.append(HashEntry(kind, m["hex"].lower(), (m["label"] or "").strip(), number))
    return entries


def load_hash_list(path: Path, name: str | None = None) -> HashList:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HashListError(f"{path}: cannot read hash list: {e}") from e
    return HashList(name or str(path), parse_hash_list(text, str(path)))


def policy_lists(names: Iterable[str], base: Path, settings: Settings) -> list[HashList]:
    """The lists a hashlist policy names, relative to its folder `base`. A relative name also reads
    the file of the same name in settings.hash_lists_dir (your additions to a shipped list), when it
    exists; a name found in neither place is a HashListError."""
    found: list[HashList] = []
    for name in names:
        beside = base / name
        candidates = [beside]
        if not Path(name).is_absolute():
            yours = settings.hash_lists_dir / Path(name).name
            if not beside.exists() or not yours.exists() or not beside.samefile(yours):
                candidates.append(yours)
        present = [p for p in candidates if p.exists()]
        for path in present or [beside]:  # none there: the error names the policy's own path
            found.append(load_hash_list(path, name if path == beside else str(path)))
    return found


def lists_digest(lists: Iterable[HashList], kind: HashKind) -> str:
    """Short digest of the entries of one kind: stored results say which list content matched."""
    values = sorted({e.value for hl in lists for e in hl.of_kind(kind)})
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:12]


# --- hashing ---------------------------------------------------------------------------


def phash_hex(image: Image.Image) -> str:
    return str(imagehash.phash(image))


def phash_array(hexes: Iterable[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [len(a), len(b)] between 64-bit hashes."""
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)


# --- building lists ----------------------------------------------------------------------


def resolve_list_path(name: str, settings: Settings) -> Path:
    """Where `hashlist add --list NAME` writes. Anything with a folder or a suffix is a path. A bare
    NAME is `<first policy folder>/lists/NAME.txt` for policies of your own (--policy,
    MODERATOR_POLICIES), where they look; for the shipped policies it is
    `<hash_lists_dir>/NAME.txt`, which they read too: nothing is written into the package."""
    if "/" in name or "\\" in name or Path(name).suffix:
        return Path(name)
    first = settings.policy_paths()[0]
    folder = first if first.is_dir() or not first.suffix else first.parent
    if _inside(folder, SHIPPED_POLICIES):
        return settings.hash_lists_dir / f"{name}.txt"
    return folder / "lists" / f"{name}.txt"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


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


def image_hash_lines(data: bytes, settings: Settings) -> tuple[str, str]:
    """(sha256 hex, phash hex) of an image's bytes; phash of the first frame as the pipeline decodes it."""
    from moderator.decode import decode_image  # raises DecodeError

    decoded = decode_image(data, max_pixels=settings.max_image_pixels, max_frames=1)
    return hashlib.sha256(data).hexdigest(), phash_hex(decoded.frames[0])


def add_images(list_path: Path, files: Iterable[Path], settings: Settings, label: str = "") -> AddReport:
    """Append sha256 and phash lines for each image to the list (created if missing);
    hashes already present are not repeated."""
    from moderator.decode import DecodeError

    existing: set[str] = set()
    if list_path.exists():
        existing = {f"{e.kind}:{e.value}" for e in load_hash_list(list_path).entries}
    report = AddReport()
    lines: list[str] = []
    for path in files:
        try:
            sha, ph = image_hash_lines(path.read_bytes(), settings)
        except (OSError, DecodeError) as e:
            report.errors.append(f"{path}: {e}")
            continue
        comment = "  # " + " ".join((label or path.name).split())  # one line, whatever the file name
        for entry in (f"sha256:{sha}", f"phash:{ph}"):
            if entry in existing:
                report.present += 1
                continue
            existing.add(entry)
            lines.append(entry + comment)
    if lines:
        list_path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = list_path.exists() and not list_path.read_bytes().endswith(b"\n") and list_path.stat().st_size
        with list_path.open("a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + "\n".join(lines) + "\n")
        report.added = len(lines)
    return report

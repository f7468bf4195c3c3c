"""List files: kinds of hash, entries with their provenance, reading and writing lines.

One hash per line, in any mix of kinds:

    pdq <64 hex>  source="ncmec.csv:12" tags=csam,a1   # label
    md5 <32 hex>
    sha256 <64 hex>
    phash <16 hex>                                      # imagehash.phash (64 bits), older lists
    sha256:<64 hex>  # label                            # the older `kind:hex` form reads the same

After the hash, optional metadata columns `key=value` (`source`: where the entry came from,
`tags`: comma-separated), a value with spaces in double quotes; after `#`, a free label.
Blank lines and lines starting with `#` are ignored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from moderator.settings import Settings


class HashKind(StrEnum):
    PDQ = "pdq"  # Meta's PDQ, 256 bits, perceptual
    MD5 = "md5"
    SHA256 = "sha256"
    PHASH = "phash"  # imagehash.phash, 64 bits, perceptual (lists made before PDQ)

    @property
    def exact(self) -> bool:
        return self in (HashKind.MD5, HashKind.SHA256)


HEX_LEN = {HashKind.PDQ: 64, HashKind.MD5: 32, HashKind.SHA256: 64, HashKind.PHASH: 16}
PERCEPTUAL_BITS = {HashKind.PDQ: 256, HashKind.PHASH: 64}
# PDQ: threatexchange's PDQ_CONFIDENT_MATCH_THRESHOLD; pHash: what the shipped policy always used.
DEFAULT_MAX_DISTANCE = {HashKind.PDQ: 31, HashKind.PHASH: 8}
META_KEYS = ("source", "tags")

_VALUE = r'(?:"[^"]*"|[^\s"#]+)'
_LINE = re.compile(
    r"^(?P<kind>[A-Za-z0-9_]+)(?::|[ \t]+)(?P<hex>[0-9a-fA-F]+)"
    rf"(?P<meta>(?:[ \t]+[a-z_]+={_VALUE})*)[ \t]*(?:#[ \t]*(?P<label>.*))?$"
)
_META = re.compile(rf"([a-z_]+)=({_VALUE})")


class HashListError(ValueError):
    """A list file that cannot be read or has a malformed line (message names file and line)."""


@dataclass(frozen=True, slots=True)
class HashEntry:
    kind: HashKind
    value: str  # lower-case hex
    label: str = ""
    line: int = 0  # line in the list file (0: not read from one)
    source: str = ""  # where it came from: the file and line it was imported from, an exchange
    tags: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}" + (f" ({self.label})" if self.label else "")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True)
class HashList:
    name: str  # how the policy names it (the path as written), used in evidence
    entries: list[HashEntry]

    def of_kind(self, kind: HashKind) -> list[HashEntry]:
        return [e for e in self.entries if e.kind is kind]


def check_hex(kind: HashKind, value: str, where: str) -> str:
    """`value` as lower-case hex of the right length for `kind`; HashListError naming `where` otherwise."""
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", value):
        raise HashListError(f"{where}: a {kind} hash is hex digits, got {value[:80]!r}")
    if len(value) != HEX_LEN[kind]:
        raise HashListError(f"{where}: a {kind} hash has {HEX_LEN[kind]} hex digits, got {len(value)}")
    return value


_KINDS = {k.value: k for k in HashKind}


def parse_line(line: str, where: str, number: int = 0, shared: dict[str, object] | None = None) -> HashEntry:
    """One list line (stripped, not blank nor a comment) as an entry. `shared`: one copy of each
    source and tags value across a file's entries (lists of a million lines repeat them)."""
    m = _LINE.match(line)
    if m is None:
        raise HashListError(f"{where}: expected '<kind> <hex>' (pdq, md5, sha256, phash), got {line[:80]!r}")
    kind_text, value, meta_text, label = m.group("kind", "hex", "meta", "label")
    kind = _KINDS.get(kind_text) or _KINDS.get(kind_text.lower())
    if kind is None:
        raise HashListError(f"{where}: unknown hash kind {kind_text!r} (pdq, md5, sha256 or phash)")
    if len(value) != HEX_LEN[kind]:
        raise HashListError(f"{where}: a {kind} hash has {HEX_LEN[kind]} hex digits, got {len(value)}")
    source = ""
    tags: tuple[str, ...] = ()
    if meta_text:
        meta: dict[str, str] = {}
        for key, raw in _META.findall(meta_text):
            if key not in META_KEYS:
                raise HashListError(f"{where}: unknown column {key!r} (known: {', '.join(META_KEYS)})")
            meta[key] = raw[1:-1] if raw.startswith('"') else raw
        source = meta.get("source", "")
        tags = tuple(t for t in (s.strip() for s in meta.get("tags", "").split(",")) if t)
        if shared is not None:
            source = shared.setdefault(source, source)  # type: ignore[assignment]
            tags = shared.setdefault(meta.get("tags", ""), tags)  # type: ignore[assignment]
    return HashEntry(kind, value.lower(), label.strip() if label else "", number, source, tags)


def parse_hash_list(text: str, source: str) -> list[HashEntry]:
    """Entries of a list file's text; raises HashListError naming `source` and the line."""
    entries = []
    shared: dict[str, object] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            entries.append(parse_line(line, f"{source}:{number}", number, shared))
    return entries


def _quoted(value: str) -> str:
    value = " ".join(value.replace('"', "'").split())  # one line; no quote can end the value early
    return f'"{value}"' if re.search(r'[\s#="]', value) or not value else value


def format_entry(entry: HashEntry) -> str:
    """The list-file line of an entry (what parse_line reads back)."""
    parts = [f"{entry.kind} {entry.value}"]
    if entry.source:
        parts.append(f"source={_quoted(entry.source)}")
    if entry.tags:
        parts.append(f"tags={_quoted(','.join(t.replace(',', ';') for t in entry.tags))}")
    label = " ".join(entry.label.split())
    return " ".join(parts) + (f"  # {label}" if label else "")


# path -> ((mtime_ns, size), entries): the exact and the perceptual policy read the same list, which
# may hold a million lines; read it once while it is unchanged (entries are never modified).
_READ: dict[str, tuple[tuple[int, int], list[HashEntry]]] = {}


def load_hash_list(path: Path, name: str | None = None) -> HashList:
    try:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        cached = _READ.get(str(path))
        if cached is not None and cached[0] == key:
            return HashList(name or str(path), cached[1])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HashListError(f"{path}: cannot read hash list: {e}") from e
    entries = parse_hash_list(text, str(path))
    if len(_READ) >= 16:
        _READ.clear()
    _READ[str(path)] = (key, entries)
    return HashList(name or str(path), entries)


def append_entries(path: Path, entries: Iterable[HashEntry]) -> tuple[int, int]:
    """Append entries to a list file (created if missing); (written, already present by kind and value)."""
    existing: set[str] = set()
    if path.exists():
        existing = {e.key for e in load_hash_list(path).entries}
    lines: list[str] = []
    present = 0
    for entry in entries:
        if entry.key in existing:
            present += 1
            continue
        existing.add(entry.key)
        lines.append(format_entry(entry))
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        with path.open("a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + "\n".join(lines) + "\n")
    return len(lines), present


def policy_lists(names: Iterable[str], base: Path, settings: Settings) -> list[HashList]:
    """The lists a hashlist policy names, relative to its folder `base`. A relative name also reads
    the file of the same name in settings.hash_lists_dir (your additions to a shipped list), when it
    exists; a name found in neither place is a HashListError."""
    found: list[HashList] = []
    for name in names:
        for path, shown in list_paths(name, base, settings):
            found.append(load_hash_list(path, shown))
    return found


def list_paths(name: str, base: Path, settings: Settings) -> list[tuple[Path, str]]:
    """(path, name shown in evidence) of the files a policy's list name reads (see policy_lists)."""
    beside = base / name
    candidates = [beside]
    if not Path(name).is_absolute():
        yours = settings.hash_lists_dir / Path(name).name
        if not beside.exists() or not yours.exists() or not beside.samefile(yours):
            candidates.append(yours)
    present = [p for p in candidates if p.exists()]
    # none there: the error names the policy's own path
    return [(p, name if p == beside else str(p)) for p in present or [beside]]


def lists_digest(lists: Iterable[HashList], kinds: HashKind | Iterable[HashKind]) -> str:
    """Short digest of the entries of some kinds, where they are and their provenance included: the
    evidence stored with a result names the list, line and provenance of the entry it matched, so
    any change to those entries (a line moved too) makes the results stale. In file order: sorting
    a million entries costs more than reading them."""
    wanted = {kinds} if isinstance(kinds, HashKind) else set(kinds)
    digest = hashlib.sha256()
    for hl in lists:
        picked = (e for e in hl.entries if e.kind in wanted)
        rows = "\n".join(f"{e.line}\t{e.kind}\t{e.value}\t{e.source}\t{','.join(e.tags)}\t{e.label}" for e in picked)
        digest.update(f"{hl.name}\n{rows}\n".encode())
    return digest.hexdigest()[:12]

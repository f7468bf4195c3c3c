"""Importing and exporting lists in the formats people exchange.

- `plain`: the list file format (entries.py): `pdq <hex> [source=..] [tags=a,b] [# label]`, one a
  line, older `kind:hex` lines too.
- `csv`: the CSV that `threatexchange dataset --print-signals --csv` writes: a header, then
  `signal_type,signal_str,collab,category,tags` (tags space-separated). Rows whose category is
  NEGATIVE_CLASS (a member said "not harmful") are not imported.
- `threatexchange`: the text threatexchange reads and prints: its file exchange
  (LocalFileSignalExchangeAPI: `<signal type> <signal>` a line), `threatexchange dataset -P`
  output (`pdq <hex> ['collab'] CATEGORY [tag,tag]`), and its `simple.<INDICATOR_TYPE>.te` state
  files (CSV of indicator, first descriptor id, added on, labels). Exported as file-exchange lines,
  which `threatexchange` reads back with `--api file`.

Signal type names are threatexchange's (`pdq`, `video_md5`, `video_sha256`, indicator types
`HASH_PDQ`, `HASH_MD5`...) or ours (`md5`, `sha256`, `phash`).
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path

from moderator.hashlists.entries import HashEntry, HashKind, HashListError, check_hex, format_entry, parse_hash_list

CSV_FIELDS = ["signal_type", "signal_str", "collab", "category", "tags"]
CATEGORIES = {"POSITIVE_CLASS", "NEGATIVE_CLASS", "INVESTIGATION_SEED", "DISPUTED"}
# a category short of POSITIVE_CLASS is kept as a tag, so a reviewer sees how sure the source was
DOUBT_TAGS = {"investigation_seed": "INVESTIGATION_SEED", "disputed": "DISPUTED"}
_TE_NAME = re.compile(r"^simple\.(?P<type>[^.]+)\.te$")


class ListFormat(StrEnum):
    AUTO = "auto"
    PLAIN = "plain"
    CSV = "csv"
    THREATEXCHANGE = "threatexchange"


@dataclass
class Imported:
    entries: list[HashEntry] = field(default_factory=list)
    negative: int = 0  # rows an exchange member marked not harmful: left out
    unsupported: list[str] = field(default_factory=list)  # signal types that are not image hashes (url, text...)


@cache
def signal_kinds() -> dict[str, HashKind]:
    """Signal type names and indicator types -> our kinds, from threatexchange's own signal classes."""
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.signal_type.sha256 import VideoSHA256Signal

    names: dict[str, HashKind] = {k.value: k for k in HashKind}
    names |= {"photo_md5": HashKind.MD5, "photo_sha256": HashKind.SHA256}
    for cls, kind in ((PdqSignal, HashKind.PDQ), (VideoMD5Signal, HashKind.MD5), (VideoSHA256Signal, HashKind.SHA256)):
        names[cls.get_name()] = kind
        indicator = cls.INDICATOR_TYPE
        for name in [indicator] if isinstance(indicator, str) else list(indicator):
            names[name.lower()] = kind
    return names


def threatexchange_name(kind: HashKind) -> str:
    """The signal type name threatexchange reads for our kind (phash: none, ours kept)."""
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from threatexchange.signal_type.sha256 import VideoSHA256Signal

    by_kind = {HashKind.PDQ: PdqSignal, HashKind.MD5: VideoMD5Signal, HashKind.SHA256: VideoSHA256Signal}
    cls = by_kind.get(kind)
    return cls.get_name() if cls else kind.value


def _kind(name: str, where: str, out: Imported) -> HashKind | None:
    kind = signal_kinds().get(name.strip().lower())
    if kind is None and re.fullmatch(r"[A-Za-z0-9_]+", name.strip()):
        out.unsupported.append(f"{where}: {name.strip()}")  # e.g. url, raw_text: not an image hash
    elif kind is None:
        raise HashListError(f"{where}: expected a signal type (pdq, md5, sha256...), got {name[:40]!r}")
    return kind


def detect(path: Path, text: str) -> ListFormat:
    """The format by name (.te state files) and header (CSV); text lines are tried both ways (read_list_file)."""
    if _TE_NAME.match(path.name):
        return ListFormat.THREATEXCHANGE
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.replace(" ", "").lower().startswith("signal_type,signal_str"):
        return ListFormat.CSV
    return ListFormat.AUTO


def _line_of(error: HashListError) -> int:
    m = re.search(r":(\d+):", str(error))
    return int(m[1]) if m else 0


def read_list_file(path: Path, fmt: ListFormat = ListFormat.AUTO) -> Imported:
    """Entries of a file in an exchange format; each keeps its provenance (source = file:line, the
    collab where the format names one; tags). Raises HashListError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise HashListError(f"{path}: cannot read: {e}") from e
    name = path.name
    if fmt is ListFormat.AUTO:
        fmt = detect(path, text)
    if fmt is ListFormat.AUTO:  # text lines: ours, else threatexchange's; the error of the one that got further
        try:
            return _read_plain(text, path)
        except HashListError as ours:
            try:
                return _read_text(text, name)
            except HashListError as theirs:
                raise (theirs if _line_of(theirs) > _line_of(ours) else ours) from None
    if fmt is ListFormat.PLAIN:
        return _read_plain(text, path)
    if fmt is ListFormat.CSV:
        return _read_csv(text, name)
    te = _TE_NAME.match(name)
    return _read_te(text, name, te["type"]) if te else _read_text(text, name)


def _read_plain(text: str, path: Path) -> Imported:
    entries = parse_hash_list(text, path.name)
    return Imported(
        [HashEntry(e.kind, e.value, e.label, 0, e.source or f"{path.name}:{e.line}", e.tags) for e in entries]
    )


def _read_csv(text: str, name: str) -> Imported:
    out = Imported()
    reader = csv.DictReader(io.StringIO(text))
    missing = [f for f in ("signal_type", "signal_str") if f not in (reader.fieldnames or [])]
    if missing:
        raise HashListError(f"{name}:1: a threatexchange CSV has the columns {','.join(CSV_FIELDS)}; missing {missing}")
    for row in reader:
        where = f"{name}:{reader.line_num}"
        kind = _kind(row["signal_type"] or "", where, out)
        if kind is None:
            continue
        if (row.get("category") or "").strip().upper() == "NEGATIVE_CLASS":
            out.negative += 1
            continue
        collab = (row.get("collab") or "").strip()
        tags = category_tags(row.get("category") or "", (row.get("tags") or "").split())
        value = check_hex(kind, row["signal_str"] or "", where)
        out.entries.append(HashEntry(kind, value, "", 0, f"{collab} ({where})" if collab else where, tags))
    return out


def category_tags(category: str, tags: Iterable[str]) -> tuple[str, ...]:
    """Tags of an entry: its own, and its category when that is short of POSITIVE_CLASS."""
    doubt = [k for k, v in DOUBT_TAGS.items() if v == category.strip().upper()]
    return tuple(dict.fromkeys([*tags, *doubt]))


def _read_text(text: str, name: str) -> Imported:
    out = Imported()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}:{number}"
        type_name, _, rest = line.partition(" ")
        signal, _, rest = rest.strip().partition(" ")
        kind = _kind(type_name, where, out)
        if kind is None:
            continue
        try:
            words = shlex.split(rest)
        except ValueError as e:
            raise HashListError(f"{where}: {e}") from None
        cat = next((i for i, w in enumerate(words) if w in CATEGORIES), None)
        collab = " ".join(words if cat is None else words[:cat])
        tags: tuple[str, ...] = ()
        if cat is not None:
            if words[cat] == "NEGATIVE_CLASS":
                out.negative += 1
                continue
            tags = category_tags(words[cat], [t for t in ",".join(words[cat + 1 :]).split(",") if t])
        value = check_hex(kind, signal, where)
        out.entries.append(HashEntry(kind, value, "", 0, f"{collab} ({where})" if collab else where, tags))
    return out


def _read_te(text: str, name: str, indicator_type: str) -> Imported:
    from threatexchange.exchanges.clients.fb_threatexchange.descriptor import SimpleDescriptorRollup

    out = Imported()
    kind = _kind(indicator_type, f"{name}:1", out)
    if kind is None:
        return out
    reader = csv.reader(io.StringIO(text))
    for row in reader:
        if not row:
            continue
        where = f"{name}:{reader.line_num}"
        try:
            rollup = SimpleDescriptorRollup.from_row(row[1:])
        except (IndexError, ValueError) as e:
            raise HashListError(f"{where}: not a threatexchange .te row ({e})") from None
        value = check_hex(kind, row[0], where)
        label = f"descriptor {rollup.first_descriptor_id} added {rollup.added_on}"
        out.entries.append(HashEntry(kind, value, label, 0, where, tuple(sorted(rollup.labels))))
    return out


def write_list(entries: Iterable[HashEntry], fmt: ListFormat, collab: str = "") -> str:
    """Entries as the text of an export (`collab`: the CSV's collab column where an entry has no source)."""
    if fmt in (ListFormat.PLAIN, ListFormat.AUTO):
        return "".join(format_entry(e) + "\n" for e in entries)
    if fmt is ListFormat.THREATEXCHANGE:
        return "".join(f"{threatexchange_name(e.kind)} {e.value}\n" for e in entries)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        doubt = [DOUBT_TAGS[t] for t in e.tags if t in DOUBT_TAGS]
        tags = " ".join(t.replace(" ", "_") for t in e.tags if t not in DOUBT_TAGS)
        row = {"signal_type": threatexchange_name(e.kind), "signal_str": e.value, "collab": e.source or collab}
        writer.writerow(row | {"category": doubt[-1] if doubt else "POSITIVE_CLASS", "tags": tags})
    return buf.getvalue()

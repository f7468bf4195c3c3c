"""zip and tar archives (plain, gz, bz2, xz), read in-stream and never extracted: the `archives` source.

URIs. Every member is an item with the URI ``ARCHIVE#MEMBER``; a member of an archive inside the archive
is ``ARCHIVE#INNER#MEMBER`` (``photos.zip#2023.tar.gz#beach/1.jpg``), and so on down. ARCHIVE is the path
on disk (the first prefix of the URI that is an existing archive file). Each MEMBER segment is the member's
name with three characters escaped, ``%`` as ``%25``, ``#`` as ``%23`` and ``~`` as ``%7E`` (nothing else
is), so ``#`` only ever separates segments. Members that share a name are all items: the first keeps the
plain segment, the n-th (n >= 2, in archive order: zip central directory, tar stream) gets ``~n``
(``photos.tar#a.jpg``, ``photos.tar#a.jpg~2``). A segment that is empty is the archive's own error
(``photos.tar.gz#``: unreadable from there on, or a limit below reached). Reading a URI returns exactly the
bytes of that member, the ones the scan read and scored.

Nesting. A member that is an archive by its content (zip or tar signature; gz/bz2/xz with a tar name) is
opened in turn and its members are the items, down to MAX_DEPTH archives below the one scanned; an archive
deeper than that is recorded as skipped with the reason. A nested archive is held in memory while its
members are read (at most MODERATOR_MAX_IMAGE_BYTES, like any member); workers keep the last few they
opened. Reading a nested archive itself by its URI is refused: its members are the items.

Limits, the same on every level. Members that are not regular files (symlinks, hard links, devices,
fifos), names that are empty, absolute or climb out with ``..``, encrypted zip members, members over
MODERATOR_MAX_IMAGE_BYTES and zip members with a bomb-like compression ratio are yielded with a skip reason:
the pipeline records them as skipped and nothing of theirs is read, let alone written to disk. Reads are
capped at the size limit whatever the headers claim. Over one archive, nested ones included: at most
MODERATOR_ARCHIVE_MAX_MEMBERS members, and at most MAX_RATIO x its size on disk (+ RATIO_FLOOR) bytes
decompressed; past either, the rest is one recorded error. A corrupt or truncated archive, at any level,
keeps what came before and records the rest as one error.

Reading one member by URI (`read`, what workers do):
- zip: by name and occurrence through the central directory (random access; the opened archive is cached);
- plain tar: by offset, from an index of member headers built once per process (headers only);
- compressed tar: a compressed stream cannot seek, so one read decompresses from the start up to the
  member. Fine for a few reads; to enqueue a big archive for workers, prefer zip or plain tar. `scan`
  itself streams a compressed tar once, in order.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from moderator.settings import Settings
from moderator.sources.archive_levels import (
    ARCHIVE_SUFFIXES,
    HEAD_BYTES,
    MAX_RATIO,
    RATIO_FLOOR,
    ArchiveLimitError,
    ArchiveMemberError,
    Budget,
    Level,
    Limits,
    Member,
    PlainTarLevel,
    ZipLevel,
    kind_of,
    open_level,
    refused,
    unsafe_name,
)
from moderator.types import SourceItem

__all__ = ["MAX_DEPTH", "MAX_RATIO", "RATIO_FLOOR", "SEP", "ArchiveMemberError", "ArchiveSource", "source"]
__all__ += ["archive_kind", "member_segment", "parse_members", "split_uri", "unsafe_name"]

SEP = "#"
OCCURRENCE = "~"
MAX_DEPTH = 3  # archives opened below the one scanned: a.zip#b.zip#c.zip#d.zip#photo.jpg is as deep as it goes
_ESCAPE = str.maketrans({"%": "%25", "#": "%23", "~": "%7E"})
_UNESCAPE = {"25": "%", "23": "#", "7E": "~"}
_CACHED_LEVELS = 6
_CACHED_NESTED_BYTES = 512 * 1024 * 1024


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' (plain) or 'tar-compressed' by the file's signature; None for anything else."""
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return None
    return kind_of(head, path.name)


# -- URIs ----------------------------------------------------------------------------------------------


def member_segment(name: str, occurrence: int = 1) -> str:
    """The URI segment of the `occurrence`-th member called `name` (see the module note)."""
    escaped = name.translate(_ESCAPE)
    return escaped if occurrence == 1 else f"{escaped}{OCCURRENCE}{occurrence}"


def _parse_segment(segment: str) -> tuple[str, int]:
    escaped, tilde, number = segment.partition(OCCURRENCE)
    occurrence = 1
    if tilde:
        if not (number.isascii() and number.isdigit() and number[0] != "0" and int(number) >= 2):
            raise ArchiveMemberError(f"bad occurrence {OCCURRENCE}{number!r} in member {segment!r}: ~2, ~3, ...")
        occurrence = int(number)
    head, *rest = escaped.split("%")
    parts = [head]
    for part in rest:
        if part[:2] not in _UNESCAPE:
            raise ArchiveMemberError(f"bad escape in member {segment!r}: only %25, %23 and %7E are used")
        parts.append(_UNESCAPE[part[:2]] + part[2:])
    return "".join(parts), occurrence


def parse_members(rest: str) -> list[tuple[str, int]]:
    """``INNER#MEMBER`` (what follows ``ARCHIVE#``) -> [(name, occurrence), ...], outermost first."""
    return [_parse_segment(segment) for segment in rest.split(SEP)]


def split_uri(uri: str) -> tuple[Path, str] | None:
    """``ARCHIVE#rest`` -> (archive path, rest); the archive is the first prefix that is one."""
    start = 0
    while (i := uri.find(SEP, start)) != -1:
        path = Path(uri[:i])
        if path.is_file() and archive_kind(path):
            return path, uri[i + 1 :]
        start = i + 1
    return None


# -- listing -------------------------------------------------------------------------------------------


def _too_deep() -> str:
    return f"archive nested more than {MAX_DEPTH} deep: not opened"


def _failure(exc: Exception) -> str:
    if isinstance(exc, ArchiveLimitError):
        return str(exc)
    return f"archive unreadable from here on: {type(exc).__name__}: {exc}"


def _sniff(member: Member) -> str | None:
    try:
        return kind_of(member.head(), member.name)
    except Exception:  # unreadable: reading it as an item records why
        return None


class _Listing:
    """One archive being listed: its path, limits and budget, shared by every nested level."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.limits = Limits(settings.max_image_bytes, settings.archive_max_members)
        self.budget = Budget(path.stat().st_size, self.limits)

    def items(self, opener: Callable[[], Level], prefix: str, inside: tuple[str, ...]) -> Iterator[SourceItem]:
        """Every member of one level (and of the archives in it) as items; never raises."""
        seen: Counter[str] = Counter()

        def located(name: str) -> tuple[str, dict[str, object]]:
            seen[name] += 1
            meta: dict[str, object] = {"archive": str(self.path), "member": name}
            if inside:
                meta["inside"] = list(inside)
            if seen[name] > 1:
                meta["occurrence"] = seen[name]
            return f"{prefix}{SEP}{member_segment(name, seen[name])}", meta

        try:
            level = opener()
            for m in level.members(self.budget):
                uri, meta = located(m.name)
                kind = None if m.reason else _sniff(m)
                if m.reason:
                    yield SourceItem(uri, partial(refused, m.reason), m.size, m.fingerprint, meta, m.reason)
                elif kind is None:
                    yield SourceItem(uri, m.read, m.size, m.fingerprint, meta)
                elif len(inside) >= MAX_DEPTH:
                    reason = _too_deep()
                    yield SourceItem(uri, partial(refused, reason), m.size, m.fingerprint, meta, reason)
                else:
                    nested = partial(_nested_level, m, kind, self.limits)
                    yield from self.items(nested, uri, (*inside, m.name))
        except Exception as exc:  # a corrupt level or a limit reached: one error, what came before is kept
            uri, meta = located("")
            del meta["member"]
            yield SourceItem(uri=uri, read=partial(refused, _failure(exc)), meta=meta)


def _nested_level(member: Member, kind: str, limits: Limits) -> Level:
    return open_level(member.read(), kind, limits)


# -- reading by URI ------------------------------------------------------------------------------------

_levels: OrderedDict[tuple[object, ...], tuple[Level, int]] = OrderedDict()
_levels_lock = threading.Lock()


def _file_key(path: Path, limits: Limits) -> tuple[tuple[object, ...], int]:
    """The cache key of an archive file (a changed file is a new key), and its size."""
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, limits), st.st_size


def _cache_get(key: tuple[object, ...]) -> Level | None:
    with _levels_lock:
        if key not in _levels:
            return None
        _levels.move_to_end(key)
        return _levels[key][0]


def _cached_level(key: tuple[object, ...], build: Callable[[], tuple[Level, int]]) -> Level:
    """The process's open level for `key` (a file, or a file and a chain of members), built once."""
    if (cached := _cache_get(key)) is not None:
        return cached
    level, size = build()  # outside the lock: reading a nested archive can take a while
    with _levels_lock:
        _levels[key] = (level, size)
        while len(_levels) > 1 and (
            len(_levels) > _CACHED_LEVELS or sum(s for _, s in _levels.values()) > _CACHED_NESTED_BYTES
        ):
            _levels.popitem(last=False)[1][0].close()
    return level


def _top_level(path: Path, limits: Limits, key: tuple[object, ...] | None = None) -> Level:
    key = key or _file_key(path, limits)[0]
    if (cached := _cache_get(key)) is not None:
        return cached
    kind = archive_kind(path)
    if kind is None:
        raise ArchiveMemberError(f"{path} is not a zip or tar archive")
    return _cached_level(key, lambda: (open_level(path, kind, limits), 0))


def _nested_open(data: bytes, kind: str, limits: Limits) -> tuple[Level, int]:
    return open_level(data, kind, limits), len(data)


def read_member(path: Path, rest: str, settings: Settings) -> bytes:
    """The bytes of the member `rest` (``INNER#MEMBER``...) of the archive at `path`."""
    chain = parse_members(rest)
    limits = Limits(settings.max_image_bytes, settings.archive_max_members)
    key, size = _file_key(path, limits)
    budget = Budget(size, limits)
    level = _top_level(path, limits, key)
    for depth, (name, occurrence) in enumerate(chain):
        last = depth == len(chain) - 1
        if not last and (cached := _cache_get(key := (*key, name, occurrence))) is not None:
            level = cached
            continue
        data = level.read(name, occurrence, budget)
        kind = kind_of(data[:HEAD_BYTES], name)
        if last:
            if kind is not None:
                raise ArchiveMemberError(
                    _too_deep() if depth >= MAX_DEPTH else f"{name!r} is a {kind} archive: its members are the items"
                )
            return data
        if kind is None:
            raise ArchiveMemberError(f"{name!r} is not an archive: it has no member {chain[depth + 1][0]!r}")
        if depth >= MAX_DEPTH:
            raise ArchiveMemberError(_too_deep())
        level = _cached_level(key, partial(_nested_open, data, kind, limits))
    raise ArchiveMemberError("no member named")  # unreachable: parse_members gives one segment at least


# -- the source ----------------------------------------------------------------------------------------


class ArchiveSource:
    name = "archives"
    priority = 50  # above files: an archive file is scanned member by member, not as one image

    def claims(self, target: str) -> bool:
        if "://" in target:
            return False
        path = Path(target)
        return (path.is_file() and archive_kind(path) is not None) or split_uri(target) is not None

    def iter_items(self, target: str, settings: Settings) -> Iterator[SourceItem]:
        path = Path(target)
        kind = archive_kind(path) if path.is_file() else None
        if kind is None:  # one member, by its URI
            yield SourceItem(uri=target, read=partial(self.read, target, settings))
            return
        path = path.resolve()
        listing = _Listing(path, settings)
        yield from listing.items(partial(_top_level, path, listing.limits), str(path), ())

    def count(self, target: str, settings: Settings) -> int | None:
        """Members (skipped ones included) for a progress total; None where that needs decompressing,
        or where a member looks like an archive (its members will be items too)."""
        path = Path(target)
        kind = archive_kind(path) if path.is_file() else None
        if kind is None:
            return 1
        if kind == "tar-compressed":
            return None
        try:
            level = _top_level(path.resolve(), Limits(settings.max_image_bytes, settings.archive_max_members))
            names = list(level.names()) if isinstance(level, ZipLevel | PlainTarLevel) else None
        except Exception:
            return None  # the scan records why
        if names is None or any(n.lower().endswith(ARCHIVE_SUFFIXES) for n in names):
            return None
        return len(names)

    def read(self, uri: str, settings: Settings) -> bytes:
        found = split_uri(uri)
        if found is None:
            raise ArchiveMemberError(f"{uri!r} is not ARCHIVE{SEP}MEMBER with an existing zip or tar archive")
        try:
            return read_member(*found, settings)
        except ArchiveMemberError:
            raise
        except Exception as exc:  # a corrupt archive, whatever the library raised
            raise ArchiveMemberError(_failure(exc)) from exc


source = ArchiveSource()

"""One level of an archive (zip, plain tar, compressed tar): its members in order, and one member by name+occurrence.

A level is opened from a file on disk (the archive scanned) or from bytes (an archive that is a member of
another one). Member reads are capped at the member size limit whatever the headers claim, and every byte
decompressed (zip members, compressed tar streams) is charged to the Budget of the archive scanned, so that
nesting cannot multiply the work. Members with the same name are told apart by their occurrence (1, 2, ...)
in archive order: the central directory of a zip, the stream of a tar.
"""

from __future__ import annotations

import io
import stat
import tarfile
import threading
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from moderator.sources.archive_inflate import BZIP2_MAGIC, GZIP_MAGIC, XZ_MAGIC, Inflated

# zip members expanding more than this many times (and past RATIO_FLOOR bytes) are refused as bombs before a
# byte is inflated: photos barely compress, a bomb inflates 1000x or more. The same ratio bounds the bytes
# decompressed from one archive, every nested level together: MAX_RATIO x its size on disk + RATIO_FLOOR.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
HEAD_BYTES = 512  # enough to tell an archive from an image (the tar magic is at 257)
_CHUNK = 1 << 20
_ZIP_DIRECTORY_ENTRY = 256  # bytes per central-directory entry we allow for (46 fixed + name and extras)
COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = (".zip", ".tar", *COMPRESSED_TAR)

Blob = Path | bytes


class ArchiveMemberError(Exception):
    """A member that cannot be read (missing, refused, over a limit, corrupt): recorded as the item's error."""


class ArchiveLimitError(ArchiveMemberError):
    """A limit of the whole archive was reached: the rest of it is not read."""


def kind_of(head: bytes, name: str) -> str | None:
    """'zip', 'tar' (plain) or 'tar-compressed' by signature (and, for compressed tar, name); else None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith((GZIP_MAGIC, BZIP2_MAGIC, XZ_MAGIC)) and name.lower().endswith(COMPRESSED_TAR):
        return "tar-compressed"
    return None


@dataclass(frozen=True)
class Limits:
    member_bytes: int  # MODERATOR_MAX_IMAGE_BYTES
    members: int  # MODERATOR_ARCHIVE_MAX_MEMBERS


class Budget:
    """What reading one archive may cost, nested levels included: bytes decompressed and members listed."""

    def __init__(self, disk_bytes: int, limits: Limits) -> None:
        self.limits = limits
        self.max_bytes = MAX_RATIO * disk_bytes + RATIO_FLOOR
        self.inflated = 0
        self.members = 0
        self._lock = threading.Lock()  # member reads run in the pipeline's threads

    def inflate(self, n: int) -> None:
        with self._lock:
            self.inflated += n
            over = self.inflated > self.max_bytes
        if over:
            raise ArchiveLimitError(
                f"archive expands more than {MAX_RATIO}:1 (over {self.max_bytes} bytes decompressed, nested"
                " archives included): the rest is not read"
            )

    def take_members(self, n: int) -> None:
        with self._lock:
            self.members += n
            over = self.members > self.limits.members
        if over:
            raise ArchiveLimitError(too_many_members(self.limits.members))


def too_many_members(limit: int) -> str:
    return f"more than MODERATOR_ARCHIVE_MAX_MEMBERS={limit} members (nested archives' included): the rest is not read"


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    fingerprint: str
    reason: str | None  # why it must not be read; None when fine
    read: Callable[[], bytes]  # the whole member, capped and charged
    head: Callable[[], bytes]  # its first HEAD_BYTES, to tell a nested archive


class Level(Protocol):
    def members(self, budget: Budget) -> Iterator[Member]:
        """Every member that is not a folder, in archive order (skipped ones included)."""

    def read(self, name: str, occurrence: int, budget: Budget) -> bytes:
        """The bytes of the `occurrence`-th member called `name`; ArchiveMemberError when refused or missing."""

    def close(self) -> None: ...


def open_level(blob: Blob, kind: str, limits: Limits) -> Level:
    if kind == "zip":
        return ZipLevel(blob, limits)
    return PlainTarLevel(blob, limits) if kind == "tar" else StreamTarLevel(blob, limits)


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be used (empty, absolute, or with a `..` component); None when fine."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name:
        return "empty member name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"absolute member path {name!r}"
    if ".." in parts:
        return f"member path {name!r} climbs out of the archive (..)"
    return None


def too_large(size: int, limit: int) -> str:
    return f"member of {size} bytes is over MODERATOR_MAX_IMAGE_BYTES={limit}"


def read_capped(f: IO[bytes], limit: int, name: str, budget: Budget | None) -> bytes:
    """At most `limit` bytes of `f`, charged as they come: headers that understate a size stop nothing."""
    if budget is None:  # charged by the stream below, if at all: one read
        data = f.read(limit + 1)
        if len(data) > limit:
            raise ArchiveMemberError(f"{name}: more than MODERATOR_MAX_IMAGE_BYTES={limit} bytes")
        return data
    parts: list[bytes] = []
    total = 0
    while chunk := f.read(min(_CHUNK, limit + 1 - total)):
        if budget is not None:
            budget.inflate(len(chunk))
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ArchiveMemberError(f"{name}: more than MODERATOR_MAX_IMAGE_BYTES={limit} bytes")
    return b"".join(parts)


def refused(reason: str) -> bytes:
    raise ArchiveMemberError(reason)


def given(data: bytes) -> bytes:
    return data


def _open_blob(blob: Blob) -> IO[bytes]:
    return blob.open("rb") if isinstance(blob, Path) else io.BytesIO(blob)


# -- zip ---------------------------------------------------------------------------------------------


def zip_reason(info: zipfile.ZipInfo, limit: int) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink member"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "not a regular file"
    if info.flag_bits & 0x1:
        return "encrypted member"
    if unsafe := unsafe_name(info.filename):
        return unsafe
    if info.file_size > limit:
        return too_large(info.file_size, limit)
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return f"compression ratio over {MAX_RATIO}:1 (a zip bomb?)"
    return None


def _check_zip_directory(fp: IO[bytes], limits: Limits) -> None:
    """Refuse, from the end record alone, a central directory too big to load (zipfile loads it whole)."""
    end_record = getattr(zipfile, "_EndRecData", None)  # zipfile's own parser of that record
    record = end_record(fp) if end_record else None
    if not record:
        return  # not found: zipfile says so in its own words
    entries, directory_bytes = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > limits.members or directory_bytes > _ZIP_DIRECTORY_ENTRY * limits.members:
        raise ArchiveLimitError(f"zip declares {entries} members: {too_many_members(limits.members)}")


def _is_folder(info: zipfile.ZipInfo) -> bool:
    return info.filename.endswith("/")  # ZipInfo.is_dir() raises IndexError on an empty name


class ZipLevel:
    """Random access through the central directory; reads from several threads are safe (zipfile's lock)."""

    def __init__(self, blob: Blob, limits: Limits) -> None:
        self.limits = limits
        with _open_blob(blob) as fp:
            _check_zip_directory(fp, limits)
        self.zf = zipfile.ZipFile(blob if isinstance(blob, Path) else io.BytesIO(blob))
        self._repeated: dict[str, list[zipfile.ZipInfo]] | None = None
        self._lock = threading.Lock()

    def names(self) -> Iterator[str]:
        return (i.filename for i in self.zf.infolist() if not _is_folder(i))

    def members(self, budget: Budget) -> Iterator[Member]:
        infos = [i for i in self.zf.infolist() if not _is_folder(i)]
        budget.take_members(len(infos))  # the directory is in memory already: all or nothing
        limit = self.limits.member_bytes
        for info in infos:
            yield Member(
                name=info.filename,
                size=info.file_size,
                fingerprint=f"zip:{info.file_size}:{info.CRC:08x}:{info.date_time}",
                reason=zip_reason(info, limit),
                read=partial(self._read, info, budget),
                head=partial(self._head, info, budget),
            )

    def read(self, name: str, occurrence: int, budget: Budget) -> bytes:
        info = self._find(name, occurrence)
        if reason := zip_reason(info, self.limits.member_bytes):
            raise ArchiveMemberError(reason)
        return self._read(info, budget)

    def close(self) -> None:
        self.zf.close()  # member reads still open keep their own handle

    def _read(self, info: zipfile.ZipInfo, budget: Budget) -> bytes:
        with self.zf.open(info) as f:
            return read_capped(f, self.limits.member_bytes, info.filename, budget)

    def _head(self, info: zipfile.ZipInfo, budget: Budget) -> bytes:
        with self.zf.open(info) as f:
            head = f.read(HEAD_BYTES)
        budget.inflate(len(head))
        return head

    def _find(self, name: str, occurrence: int) -> zipfile.ZipInfo:
        with self._lock:
            if self._repeated is None:  # names that occur more than once, each with its infos in order
                counts = Counter(self.names())
                self._repeated = {}
                for i in self.zf.infolist():
                    if counts[i.filename] > 1 and not _is_folder(i):
                        self._repeated.setdefault(i.filename, []).append(i)
        infos = self._repeated.get(name)
        if infos is None:
            info = self.zf.NameToInfo.get(name)
            infos = [info] if info is not None and not _is_folder(info) else []
        if not 1 <= occurrence <= len(infos):
            raise ArchiveMemberError(f"no member {name!r} (occurrence {occurrence}) in this zip")
        return infos[occurrence - 1]


# -- tar ---------------------------------------------------------------------------------------------


def tar_reason(info: tarfile.TarInfo, limit: int) -> str | None:
    if info.issym():
        return "symlink member"
    if info.islnk():
        return "hard link member"
    if not info.isreg():
        return "device, fifo or other special member"
    if info.issparse():
        return "sparse member"
    if unsafe := unsafe_name(info.name):
        return unsafe
    if info.size > limit:
        return too_large(info.size, limit)
    return None


def _walk(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members that are not folders; tarfile would keep every header (a million add up): it keeps none."""
    while (info := tf.next()) is not None:
        tf.members.clear()  # type: ignore[attr-defined]
        if not info.isdir():
            yield info


def _tar_fingerprint(info: tarfile.TarInfo) -> str:
    return f"tar:{info.size}:{info.mtime}"


class PlainTarLevel:
    """Headers walked with seeks; members read by offset, later, from an index built once."""

    def __init__(self, blob: Blob, limits: Limits) -> None:
        self.blob = blob
        self.limits = limits
        self._index: dict[tuple[str, int], tuple[int, int, str | None]] | None = None
        self._lock = threading.Lock()

    def names(self) -> Iterator[str]:
        with _open_blob(self.blob) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            yield from (info.name for info in _walk(tf))

    def members(self, budget: Budget) -> Iterator[Member]:
        limit = self.limits.member_bytes
        with _open_blob(self.blob) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for info in _walk(tf):
                budget.take_members(1)
                yield Member(
                    name=info.name,
                    size=info.size,
                    fingerprint=_tar_fingerprint(info),
                    reason=tar_reason(info, limit),
                    read=partial(self._read_at, info.offset_data, info.size),
                    head=partial(self._read_at, info.offset_data, min(info.size, HEAD_BYTES)),
                )

    def read(self, name: str, occurrence: int, budget: Budget) -> bytes:
        found = self._members_index().get((name, occurrence))
        if found is None:
            raise ArchiveMemberError(f"no member {name!r} (occurrence {occurrence}) in this tar")
        offset, size, reason = found
        if reason:
            raise ArchiveMemberError(reason)
        return self._read_at(offset, size)

    def close(self) -> None:
        pass

    def _members_index(self) -> dict[tuple[str, int], tuple[int, int, str | None]]:
        with self._lock:
            if self._index is None:
                index: dict[tuple[str, int], tuple[int, int, str | None]] = {}
                seen: Counter[str] = Counter()
                try:
                    with _open_blob(self.blob) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                        for info in _walk(tf):
                            if len(index) >= self.limits.members:
                                break  # the scan listed no more than these
                            seen[info.name] += 1
                            reason = tar_reason(info, self.limits.member_bytes)
                            index[info.name, seen[info.name]] = (info.offset_data, info.size, reason)
                except (tarfile.TarError, EOFError, OSError):
                    pass  # corrupt from here on: the members before it are readable, as the scan found them
                self._index = index
            return self._index

    def _read_at(self, offset: int, size: int) -> bytes:
        if size > self.limits.member_bytes:
            raise ArchiveMemberError(too_large(size, self.limits.member_bytes))
        if isinstance(self.blob, Path):
            with self.blob.open("rb") as f:
                f.seek(offset)
                data = f.read(size)
        else:
            data = self.blob[offset : offset + size]
        if len(data) != size:
            raise ArchiveMemberError(f"archive truncated: {size} bytes expected at offset {offset}, got {len(data)}")
        return data


def _extract(tf: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    f = tf.extractfile(info)
    if f is None:  # tar_reason refuses every member that is not a regular file
        raise ArchiveMemberError(f"{info.name}: not a regular file")
    return f


class StreamTarLevel:
    """A compressed tar cannot seek: one pass in order, each member's bytes taken as the stream passes them.
    Reading one member by URI decompresses from the start up to it."""

    def __init__(self, blob: Blob, limits: Limits) -> None:
        self.blob = blob
        self.limits = limits

    @contextmanager
    def _stream(self, budget: Budget) -> Iterator[tarfile.TarFile]:
        with (
            _open_blob(self.blob) as raw,
            tarfile.open(fileobj=Inflated(raw, budget.inflate), mode="r|", bufsize=_CHUNK) as tf,  # type: ignore[call-overload]
        ):
            yield tf

    def members(self, budget: Budget) -> Iterator[Member]:
        limit = self.limits.member_bytes
        with self._stream(budget) as tf:
            for info in _walk(tf):
                budget.take_members(1)
                reason = tar_reason(info, limit)
                data = b"" if reason else read_capped(_extract(tf, info), limit, info.name, None)
                yield Member(
                    name=info.name,
                    size=info.size,
                    fingerprint=_tar_fingerprint(info),
                    reason=reason,
                    read=partial(refused, reason) if reason else partial(given, data),
                    head=partial(given, data[:HEAD_BYTES]),
                )

    def read(self, name: str, occurrence: int, budget: Budget) -> bytes:
        seen = 0
        with self._stream(budget) as tf:
            for info in _walk(tf):
                budget.take_members(1)
                if info.name == name and (seen := seen + 1) == occurrence:
                    if reason := tar_reason(info, self.limits.member_bytes):
                        raise ArchiveMemberError(reason)
                    return read_capped(_extract(tf, info), self.limits.member_bytes, name, None)
        raise ArchiveMemberError(f"no member {name!r} (occurrence {occurrence}) in this tar")

    def close(self) -> None:
        pass

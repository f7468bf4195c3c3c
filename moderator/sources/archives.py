"""zip and tar archives (plain, gz, bz2, xz), read in-stream and never extracted: the `archives` source.

Every member is an item with the URI ``ARCHIVE#member/path``. Members that are not
regular files (symlinks, hard links, devices, fifos), names that are absolute or
climb out with ``..``, encrypted zip members and members over MODERATOR_MAX_IMAGE_BYTES
(or, in a zip, with a bomb-like compression ratio) are yielded with a skip reason:
the pipeline records them as skipped and nothing of theirs is read, let alone
written to disk. Reads are capped at the size limit whatever the headers claim.

Reading one member by URI (`read`, what workers do):
- zip: by name through the central directory (random access; the opened archive is
  cached per process);
- plain tar: by offset, from an index of member headers built once per process
  (headers only: the walk seeks over the data);
- compressed tar: a compressed stream cannot seek, so one read decompresses from the
  start up to the member. Fine for a few reads; to enqueue a big archive for workers,
  prefer zip or plain tar. `scan` itself streams a compressed tar once, in order.
"""

from __future__ import annotations

import stat
import tarfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath

from moderator.settings import Settings
from moderator.types import SourceItem

SEP = "#"
# zip members expanding more than this many times (and past RATIO_FLOOR bytes) are refused
# as bombs before a byte is inflated: photos barely compress, a bomb inflates 1000x or more.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
_COMPRESSED_TAR = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_COMPRESSION_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class ArchiveMemberError(Exception):
    """A member that cannot be read (missing, over the limit, corrupt): recorded as the item's error."""


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' (plain) or 'tar-compressed' by the file's signature; None for anything else."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    if head.startswith(_COMPRESSION_MAGIC) and path.name.lower().endswith(_COMPRESSED_TAR):
        return "tar-compressed"
    return None


def split_uri(uri: str) -> tuple[Path, str] | None:
    """``ARCHIVE#member`` -> (archive path, member name); the archive is the first prefix that is one."""
    start = 0
    while (i := uri.find(SEP, start)) != -1:
        path = Path(uri[:i])
        if path.is_file() and archive_kind(path):
            return path, uri[i + 1 :]
        start = i + 1
    return None


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be used (absolute, or with a `..` component); None when fine."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"absolute member path {name!r}"
    if ".." in parts:
        return f"member path {name!r} climbs out of the archive (..)"
    return None


def _too_large(size: int, limit: int) -> str:
    return f"member of {size} bytes is over MODERATOR_MAX_IMAGE_BYTES={limit}"


def _capped(f: object, limit: int, name: str) -> bytes:
    data: bytes = f.read(limit + 1)  # type: ignore[attr-defined]
    if len(data) > limit:  # headers understated the size: stop reading, never buffer the rest
        raise ArchiveMemberError(f"{name}: more than MODERATOR_MAX_IMAGE_BYTES={limit} bytes")
    return data


def _refused(reason: str) -> bytes:
    raise ArchiveMemberError(reason)


def _given(data: bytes) -> bytes:
    return data


# -- zip ---------------------------------------------------------------------------------

_zips: OrderedDict[tuple[str, int, int], zipfile.ZipFile] = OrderedDict()
_zips_lock = threading.Lock()


def _zip(path: Path) -> zipfile.ZipFile:
    """The process's open ZipFile for this archive (reads from several threads are safe)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _zips_lock:
        if key not in _zips:
            _zips[key] = zipfile.ZipFile(path)
            while len(_zips) > 4:
                _zips.popitem(last=False)[1].close()  # open member reads keep their handle
        _zips.move_to_end(key)
        return _zips[key]


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
        return _too_large(info.file_size, limit)
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return f"compression ratio over {MAX_RATIO}:1 (a zip bomb?)"
    return None


def read_zip_member(path: Path, name: str, limit: int) -> bytes:
    zf = _zip(path)
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ArchiveMemberError(f"no member {name!r} in {path}") from None
    if reason := zip_reason(info, limit):
        raise ArchiveMemberError(reason)
    with zf.open(info) as f:
        return _capped(f, limit, name)


def iter_zip(path: Path, limit: int) -> Iterator[SourceItem]:
    # The central directory is read whole (zipfile's way): about 100 bytes per member.
    for info in _zip(path).infolist():
        if info.is_dir():
            continue
        yield SourceItem(
            uri=f"{path}{SEP}{info.filename}",
            read=partial(read_zip_member, path, info.filename, limit),
            size=info.file_size,
            fingerprint=f"zip:{info.file_size}:{info.CRC:08x}:{info.date_time}",
            meta={"archive": str(path), "member": info.filename},
            skip_reason=zip_reason(info, limit),
        )


# -- tar ---------------------------------------------------------------------------------


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
        return _too_large(info.size, limit)
    return None


def _walk(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (info := tf.next()) is not None:
        tf.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header: a million add up
        yield info


def _read_at(path: Path, offset: int, size: int, limit: int) -> bytes:
    if size > limit:
        raise ArchiveMemberError(_too_large(size, limit))
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise ArchiveMemberError(f"archive truncated: {size} bytes expected at offset {offset}, got {len(data)}")
    return data


def iter_tar(path: Path, limit: int, compressed: bool) -> Iterator[SourceItem]:
    # Plain tar: headers are walked with seeks and members read later by offset. Compressed:
    # one pass over the stream, so each member's bytes are taken as the stream passes them.
    try:
        with tarfile.open(path, "r|*" if compressed else "r:") as tf:
            for info in _walk(tf):
                if info.isdir():
                    continue
                uri = f"{path}{SEP}{info.name}"
                reason = tar_reason(info, limit)
                meta: dict[str, object] = {"archive": str(path), "member": info.name}
                if reason:
                    read = partial(_refused, reason)
                elif compressed:
                    read = partial(_given, _capped(tf.extractfile(info), limit, info.name))
                else:
                    read = partial(_read_at, path, info.offset_data, info.size, limit)
                    meta["offset"] = info.offset_data
                yield SourceItem(
                    uri=uri,
                    read=read,
                    size=info.size,
                    fingerprint=f"tar:{info.size}:{info.mtime}",
                    meta=meta,
                    skip_reason=reason,
                )
    except (tarfile.TarError, EOFError, OSError) as exc:  # a corrupt or truncated archive: its own error
        message = f"archive unreadable from here on: {type(exc).__name__}: {exc}"
        yield SourceItem(uri=f"{path}{SEP}", read=partial(_refused, message), meta={"archive": str(path)})


_tar_index: OrderedDict[tuple[str, int, int], dict[str, tuple[int, int]]] = OrderedDict()
_tar_lock = threading.Lock()


def _index(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of a plain tar; a later member of the same name wins."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _tar_lock:
        if key not in _tar_index:
            with tarfile.open(path, "r:") as tf:
                _tar_index[key] = {i.name: (i.offset_data, i.size) for i in _walk(tf) if i.isreg()}
            while len(_tar_index) > 2:
                _tar_index.popitem(last=False)
        _tar_index.move_to_end(key)
        return _tar_index[key]


def read_tar_member(path: Path, name: str, limit: int, compressed: bool) -> bytes:
    if not compressed:
        if name not in (index := _index(path)):
            raise ArchiveMemberError(f"no regular member {name!r} in {path}")
        return _read_at(path, *index[name], limit)
    with tarfile.open(path, "r|*") as tf:  # sequential: see the module note
        for info in _walk(tf):
            if info.name == name:
                if reason := tar_reason(info, limit):
                    raise ArchiveMemberError(reason)
                return _capped(tf.extractfile(info), limit, name)
    raise ArchiveMemberError(f"no member {name!r} in {path}")


# -- the source ----------------------------------------------------------------------------


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
        limit = settings.max_image_bytes
        yield from iter_zip(path, limit) if kind == "zip" else iter_tar(path, limit, kind != "tar")

    def count(self, target: str, settings: Settings) -> int | None:
        """Members (skipped ones included) for a progress total; None where that needs decompressing."""
        path = Path(target)
        kind = archive_kind(path) if path.is_file() else None
        if kind == "zip":
            return sum(1 for i in _zip(path).infolist() if not i.is_dir())
        if kind == "tar":
            with tarfile.open(path, "r:") as tf:
                return sum(1 for i in _walk(tf) if not i.isdir())
        return None if kind else 1

    def read(self, uri: str, settings: Settings) -> bytes:
        found = split_uri(uri)
        if found is None:
            raise ArchiveMemberError(f"{uri!r} is not ARCHIVE{SEP}MEMBER with an existing zip or tar archive")
        path, name = found
        kind = archive_kind(path)
        if kind == "zip":
            return read_zip_member(path, name, settings.max_image_bytes)
        return read_tar_member(path, name, settings.max_image_bytes, kind != "tar")


source = ArchiveSource()

"""Archives made in memory for the archive tests: zip and tar (plain, gz, bz2, xz), duplicates and nesting allowed."""

from __future__ import annotations

import io
import tarfile
import warnings
import zipfile
from collections.abc import Iterable

KINDS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz")
_TAR_MODES = {"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}

Members = Iterable[tuple[str, bytes]]


def zip_bytes(members: Members, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression) as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": duplicates are the point of some tests
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data, compress_type=compression)  # "" too
    return buf.getvalue()


def tar_bytes(members: Members, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def archive_bytes(kind: str, members: Members) -> bytes:
    """`kind` one of KINDS; the file name of such an archive must end with `.{kind}`."""
    return zip_bytes(members) if kind == "zip" else tar_bytes(members, _TAR_MODES[kind])

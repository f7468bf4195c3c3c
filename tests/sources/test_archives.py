"""zip and tar archives: members as items, hostile members skipped with a reason, nothing extracted."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from moderator import sources
from moderator.pipeline import Pipeline
from moderator.settings import Settings
from moderator.sources.archives import ArchiveMemberError, source
from moderator.store import ExportFilters, Store
from moderator.types import ItemStatus
from tests.conftest import jpeg_bytes

LIMIT = 200_000  # MODERATOR_MAX_IMAGE_BYTES for these tests
GOOD = {"top.jpg": jpeg_bytes(1), "a/b/deep.jpg": jpeg_bytes(2), "a/side.jpg": jpeg_bytes(3)}
TAR_MODES = {"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}


@pytest.fixture
def settings(tiny_settings: Settings) -> Settings:
    return tiny_settings.model_copy(update={"max_image_bytes": LIMIT})


def _tar_entry(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data) if data else None)


def make_tar(path: Path, mode: str) -> Path:
    with tarfile.open(path, mode) as tf:
        _tar_entry(tf, "a", type=tarfile.DIRTYPE)
        for name, data in GOOD.items():
            _tar_entry(tf, name, data)
        _tar_entry(tf, "link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _tar_entry(tf, "hard.jpg", type=tarfile.LNKTYPE, linkname="top.jpg")
        _tar_entry(tf, "dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _tar_entry(tf, "fifo.jpg", type=tarfile.FIFOTYPE)
        _tar_entry(tf, "../escape.jpg", jpeg_bytes(4))
        _tar_entry(tf, "/abs.jpg", jpeg_bytes(5))
        _tar_entry(tf, "big.jpg", bytes(LIMIT + 1))
    return path


def make_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/", b"")
        for name, data in GOOD.items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("../escape.jpg", jpeg_bytes(4))
        zf.writestr("/abs.jpg", jpeg_bytes(5))
        zf.writestr("big.jpg", jpeg_bytes(6) + bytes(LIMIT))
    return path


def make_bomb(path: Path) -> Path:
    """One 150 MB member of zeros in a ~150 kB zip: declared size under a 256 MB limit, ratio ~1000:1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb.jpg", "w", force_zip64=True) as f:
        chunk = bytes(1 << 20)
        for _ in range(150):
            f.write(chunk)
    return path


ARCHIVES = {"zip": make_zip, **{ext: (lambda p, m=mode: make_tar(p, m)) for ext, mode in TAR_MODES.items()}}
SKIPPED = {"link.jpg", "../escape.jpg", "/abs.jpg", "big.jpg"}
TAR_ONLY_SKIPPED = {"hard.jpg", "dev.jpg", "fifo.jpg"}


@pytest.fixture(params=sorted(ARCHIVES))
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    ext = request.param
    return ARCHIVES[ext](tmp_path / f"photos.{ext}")


def test_members_are_items_with_archive_uris(archive: Path, settings: Settings) -> None:
    assert sources.resolve(str(archive)).name == "archives"
    items = {i.uri.split("#", 1)[1]: i for i in source.iter_items(str(archive), settings)}
    expected_skips = SKIPPED | (TAR_ONLY_SKIPPED if ".tar" in archive.name else set())
    assert set(items) == set(GOOD) | expected_skips  # folders are not items
    for name, data in GOOD.items():
        item = items[name]
        assert item.uri == f"{archive.resolve()}#{name}"
        assert item.skip_reason is None
        assert item.read() == data
        assert source.read(item.uri, settings) == data  # what a worker does, by uri alone
    for name in expected_skips:
        assert items[name].skip_reason, name
        with pytest.raises(ArchiveMemberError):
            items[name].read()
    assert "symlink" in (items["link.jpg"].skip_reason or "")
    assert "over MODERATOR_MAX_IMAGE_BYTES" in (items["big.jpg"].skip_reason or "")


def test_scan_records_members_and_skips_and_extracts_nothing(archive: Path, settings: Settings, store: Store) -> None:
    before = sorted(p for p in archive.parent.rglob("*") if "store.db" not in p.name)
    summary = Pipeline(settings, store).scan_targets([str(archive)])
    rows = {r.uri.split("#", 1)[1]: r for r in store.iter_export(ExportFilters())}
    n_skipped = len(rows) - len(GOOD)
    assert (summary.scanned, summary.skipped, summary.errors) == (len(GOOD), n_skipped, 0)
    for name in GOOD:
        assert rows[name].status == ItemStatus.OK
    skipped = [r for r in rows.values() if r.status == ItemStatus.SKIPPED]
    assert len(skipped) == n_skipped and all(r.error for r in skipped)
    assert sorted(p for p in archive.parent.rglob("*") if "store.db" not in p.name) == before

    again = Pipeline(settings, store).scan_targets([str(archive)])
    assert (again.scanned, again.skipped, again.unchanged) == (0, 0, len(rows))  # resumable, skips included


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path, tiny_settings: Settings) -> None:
    bomb = make_bomb(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 2_000_000
    (item,) = source.iter_items(str(bomb), tiny_settings)  # the default 256 MB limit: the ratio catches it
    assert item.skip_reason and "ratio" in item.skip_reason
    with pytest.raises(ArchiveMemberError, match="ratio"):
        source.read(item.uri, tiny_settings)


def test_truncated_compressed_tar_keeps_what_came_before(tmp_path: Path, settings: Settings, store: Store) -> None:
    whole = make_tar(tmp_path / "whole.tar.gz", "w:gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    summary = Pipeline(settings, store).scan_targets([str(cut)])
    assert summary.errors == 1 and summary.errors_by_reason["read_failed"] == 1
    broken = [r for r in store.iter_export(ExportFilters()) if r.status == ItemStatus.ERROR]
    assert broken[0].uri == f"{cut.resolve()}#" and "unreadable" in (broken[0].error or "")


def test_plain_files_are_not_claimed(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes(1))
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"not an archive")
    assert not source.claims(str(photo)) and not source.claims(str(fake))
    assert sources.resolve(str(photo)).name == "files"

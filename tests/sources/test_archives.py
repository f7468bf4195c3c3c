"""zip and tar archives: members as items, hostile members skipped with a reason, nothing extracted."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import stat
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from moderator import sources
from moderator.pipeline import Pipeline, ScanSummary
from moderator.settings import Settings
from moderator.sources.archives import MAX_DEPTH, MAX_RATIO, ArchiveMemberError, source
from moderator.store import ExportFilters, ExportRow, Store
from moderator.types import ItemStatus
from tests.conftest import jpeg_bytes
from tests.sources.archive_builders import KINDS, archive_bytes, tar_bytes, zip_bytes

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


# -- duplicates, nesting, limits on every level ------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan_rows(path: Path, settings: Settings, store: Store) -> tuple[ScanSummary, dict[str, ExportRow]]:
    summary = Pipeline(settings, store).scan_targets([str(path)])
    return summary, {r.uri.removeprefix(f"{path.resolve()}#"): r for r in store.iter_export(ExportFilters())}


@pytest.mark.parametrize("kind", KINDS)
def test_every_duplicate_member_is_scored_and_reads_back_as_scored(
    kind: str, tmp_path: Path, settings: Settings, store: Store
) -> None:
    members = [
        ("dup.jpg", jpeg_bytes(11)),
        ("other.jpg", jpeg_bytes(12)),
        ("dup.jpg", jpeg_bytes(13)),
        ("odd #1 ~2 100%.jpg", jpeg_bytes(14)),  # the URI's own characters, in a name
        ("dup.jpg", jpeg_bytes(15)),
    ]
    path = tmp_path / f"dups.{kind}"
    path.write_bytes(archive_bytes(kind, members))
    summary, rows = scan_rows(path, settings, store)
    assert (summary.scanned, len(rows)) == (5, 5)  # one item and one URI per member
    assert {r.sha256 for r in rows.values()} == {sha(data) for _, data in members}
    assert {"dup.jpg", "other.jpg"} <= set(rows)  # a first occurrence keeps the plain URI
    for row in rows.values():  # what the review page and the workers are shown is what was scored
        assert sha(sources.read_uri(row.uri, settings)) == row.sha256, row.uri


@pytest.mark.parametrize("outer", KINDS)
def test_archives_inside_archives_are_opened_and_read_back(
    outer: str, tmp_path: Path, settings: Settings, store: Store
) -> None:
    deepest = zip_bytes([("x.jpg", jpeg_bytes(21))])
    inner = tar_bytes([("photo.jpg", jpeg_bytes(22)), ("deeper.zip", deepest)], "w:gz")
    path = tmp_path / f"outer.{outer}"
    path.write_bytes(
        archive_bytes(
            outer,
            [
                ("top.jpg", jpeg_bytes(23)),
                ("inner.tar.gz", inner),
                ("plain.tar", tar_bytes([("p.jpg", jpeg_bytes(24))])),
                ("disguised.jpg", zip_bytes([("d.jpg", jpeg_bytes(25))])),  # an archive by content, whatever its name
            ],
        )
    )
    summary, rows = scan_rows(path, settings, store)
    expected = {
        "top.jpg": 23,
        "inner.tar.gz#photo.jpg": 22,
        "inner.tar.gz#deeper.zip#x.jpg": 21,
        "plain.tar#p.jpg": 24,
        "disguised.jpg#d.jpg": 25,
    }
    assert set(rows) == set(expected) and summary.scanned == len(expected)
    for name, seed in expected.items():
        assert rows[name].status == ItemStatus.OK and rows[name].sha256 == sha(jpeg_bytes(seed))
        assert sources.read_uri(rows[name].uri, settings) == jpeg_bytes(seed)
    with pytest.raises(ArchiveMemberError, match="archive"):  # a nested archive is not itself an image
        sources.read_uri(f"{path.resolve()}#inner.tar.gz", settings)


def test_nesting_deeper_than_the_limit_is_skipped_with_a_reason(
    tmp_path: Path, settings: Settings, store: Store
) -> None:
    level = zip_bytes([("photo.jpg", jpeg_bytes(31))])
    for depth in range(MAX_DEPTH + 1, 0, -1):  # n1.zip holds n2.zip ... down to the photo
        level = zip_bytes([(f"n{depth}.zip", level), (f"ok{depth}.jpg", jpeg_bytes(depth))])
    path = tmp_path / "deep.zip"
    path.write_bytes(level)
    summary, rows = scan_rows(path, settings, store)
    chain = "#".join(f"n{d}.zip" for d in range(1, MAX_DEPTH + 2))
    assert rows[chain].status == ItemStatus.SKIPPED and "nested" in (rows[chain].error or "")
    assert summary.scanned == MAX_DEPTH + 1  # ok1.jpg .. the deepest level still opened
    with pytest.raises(ArchiveMemberError, match="nested"):
        sources.read_uri(rows[chain].uri, settings)


@pytest.mark.parametrize("ext", sorted(ARCHIVES))
def test_member_rules_hold_inside_nested_archives(ext: str, tmp_path: Path, settings: Settings) -> None:
    inner = ARCHIVES[ext](tmp_path / f"photos.{ext}").read_bytes()
    path = tmp_path / "outer.zip"
    path.write_bytes(zip_bytes([(f"photos.{ext}", inner)]))
    prefix = f"{path.resolve()}#photos.{ext}"
    if ext == "tar":  # holding a member over the size limit, a plain tar is over it too: the same rule, a level up
        (item,) = source.iter_items(str(path), settings)
        assert item.uri == prefix and "over MODERATOR_MAX_IMAGE_BYTES" in (item.skip_reason or "")
        return
    items = {i.uri.removeprefix(f"{prefix}#"): i for i in source.iter_items(str(path), settings)}
    assert set(items) == set(GOOD) | SKIPPED | (TAR_ONLY_SKIPPED if "tar" in ext else set())
    for name, data in GOOD.items():
        assert items[name].skip_reason is None and source.read(items[name].uri, settings) == data
    assert "symlink" in (items["link.jpg"].skip_reason or "")
    assert "over MODERATOR_MAX_IMAGE_BYTES" in (items["big.jpg"].skip_reason or "")
    assert "climbs out" in (items["../escape.jpg"].skip_reason or "")


def test_a_nested_zip_bomb_is_refused_before_inflating(tmp_path: Path, tiny_settings: Settings) -> None:
    path = tmp_path / "outer.tar"
    path.write_bytes(tar_bytes([("bomb.zip", make_bomb(tmp_path / "bomb.zip").read_bytes())]))
    (item,) = source.iter_items(str(path), tiny_settings)
    assert item.uri.endswith("#bomb.zip#bomb.jpg") and "ratio" in (item.skip_reason or "")


def test_an_archive_that_expands_too_much_is_cut_off_with_an_error(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "zeros.tar.gz"  # 20 members of 190 kB of zeros: about 4 MB from a few kB
    path.write_bytes(tar_bytes([(f"z{i}.bin", bytes(190_000)) for i in range(20)], "w:gz"))
    items = list(source.iter_items(str(path), settings))
    assert len(items) < 20
    assert items[-1].uri == f"{path.resolve()}#"
    with pytest.raises(ArchiveMemberError, match=f"{MAX_RATIO}:1"):
        items[-1].read()


@pytest.mark.parametrize("kind", KINDS)
def test_members_past_the_member_limit_are_one_recorded_error(kind: str, tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / f"many.{kind}"
    path.write_bytes(archive_bytes(kind, [(f"{i}.jpg", jpeg_bytes(i)) for i in range(5)]))
    items = list(source.iter_items(str(path), settings.model_copy(update={"archive_max_members": 3})))
    assert items[-1].uri == f"{path.resolve()}#" and len(items) <= 4
    with pytest.raises(ArchiveMemberError, match="MODERATOR_ARCHIVE_MAX_MEMBERS=3"):
        items[-1].read()


def test_a_corrupt_zip_is_a_recorded_error_not_a_crash(tmp_path: Path, settings: Settings, store: Store) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    summary, rows = scan_rows(path, settings, store)
    assert summary.errors == 1 and rows[""].status == ItemStatus.ERROR and "unreadable" in (rows[""].error or "")


def test_a_compressed_tar_bomb_inflates_in_bounded_steps(tmp_path: Path, settings: Settings) -> None:
    """64 MB of zeros in a few hundred bytes of bzip2: tarfile's own r|bz2 inflates it in one call."""
    header = tarfile.TarInfo("zeros.bin")
    header.size = 64 << 20
    packer = bz2.BZ2Compressor()
    parts = [packer.compress(header.tobuf())] + [packer.compress(bytes(1 << 20)) for _ in range(64)]
    path = tmp_path / "bomb.tar.bz2"
    path.write_bytes(b"".join([*parts, packer.compress(bytes(1024)), packer.flush()]))
    tracemalloc.start()
    try:
        items = list(source.iter_items(str(path), settings))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert path.stat().st_size < 10_000 and peak < 16 << 20, peak
    assert "over MODERATOR_MAX_IMAGE_BYTES" in (items[0].skip_reason or "")
    with pytest.raises(ArchiveMemberError, match=f"{MAX_RATIO}:1"):
        items[-1].read()


def test_concatenated_gzip_streams_are_one_archive(tmp_path: Path, settings: Settings) -> None:
    whole = tar_bytes([(f"{i}.jpg", jpeg_bytes(i)) for i in range(4)])
    path = tmp_path / "pigz.tar.gz"  # what parallel compressors write: several gzip members, one after another
    path.write_bytes(gzip.compress(whole[:3000]) + gzip.compress(whole[3000:]))
    items = list(source.iter_items(str(path), settings))
    assert [i.read() for i in items] == [jpeg_bytes(i) for i in range(4)]

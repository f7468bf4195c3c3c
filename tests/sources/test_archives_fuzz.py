"""Property tests of the archive reader: random names (the URI's own characters too), sizes, duplicates,
nesting past the depth limit, truncation and damage. Listing never raises; in a sound archive every member
is accounted for, as an item or a skip, under its own URI; reading a URI gives the bytes the listing gave."""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moderator.settings import Settings
from moderator.sources.archives import MAX_DEPTH, SEP, ArchiveMemberError, member_segment, source, unsafe_name
from tests.sources.archive_builders import KINDS, archive_bytes

LIMIT = 12_000  # MODERATOR_MAX_IMAGE_BYTES here: some members and nested archives (a plain tar is 10 kB+) are over it
# A sound archive: its members, each a leaf's bytes or an archive of its own.
Node = Union[bytes, "Archive"]
Archive = tuple[str, list[tuple[str, Node]]]
# (kind, members, cut): cut in [0, 1) truncates the archive's bytes there, bit is a byte to flip (or None).
Damaged = tuple[str, list[tuple[str, "DamagedNode"]], float | None, int | None]
DamagedNode = bytes | Damaged

FUZZ = settings(
    max_examples=120,
    deadline=None,  # a shared 2-core machine: examples are small, but their time is not ours to promise
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMES = st.one_of(
    st.sampled_from(["a.jpg", "a.jpg", "b.png", "d/c.jpg", "x#1", "50%", "n~2", "a.jpg~2", "%23", "é/ü.jpg"]),
    st.sampled_from(["", "~", "#", "%", "../up.jpg", "/abs.jpg", "c:/win.jpg", "./dot.jpg", "a//b"]),
    st.text(alphabet="ab#%~./é 7", max_size=10),
).filter(lambda name: not name.endswith("/"))  # a trailing slash makes a folder, not a member
# Leaves never look like an archive (no zip magic, no tar magic); some are just over the size limit.
LEAVES = st.one_of(
    st.binary(max_size=400).map(lambda b: b"LEAF" + b.replace(b"ustar", b"USTAR")),
    st.integers(LIMIT - 8, LIMIT + 8).map(lambda n: b"L" * n),
    st.just(b""),
)


def archives(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Archive]:
    return st.tuples(st.sampled_from(KINDS), st.lists(st.tuples(NAMES, children), max_size=6))


def wrapped(tree: Archive, kinds: list[str]) -> Archive:
    """`tree` as the one member of a chain of archives: nesting well past MAX_DEPTH."""
    for kind in kinds:
        tree = (kind, [("n", tree)])
    return tree


# A tar without members has no tar signature: not an archive to open.
TREES = st.builds(
    wrapped, archives(st.recursive(LEAVES, archives, max_leaves=12)), st.lists(st.sampled_from(KINDS), max_size=5)
).filter(lambda t: t[0] != "tar" or bool(t[1]))


def opened(node: Node) -> bool:
    """An archive a reader opens: what is not a leaf, but a plain tar with no members (zero blocks only)."""
    return not isinstance(node, bytes) and (node[0] != "tar" or bool(node[1]))


def member_name(name: str, node: Node | DamagedNode) -> str:
    """A nested archive's name ends with its kind (compressed tars are known by it)."""
    return name if isinstance(node, bytes) else f"{name}.{node[0]}"


def build(archive: Archive) -> bytes:
    kind, members = archive
    return archive_bytes(
        kind, [(member_name(n, node), node if isinstance(node, bytes) else build(node)) for n, node in members]
    )


def expected(archive: Archive, prefix: str, depth: int = 0) -> dict[str, bytes | None]:
    """uri -> the member's bytes, or None where it must be skipped: what a correct reader lists."""
    out: dict[str, bytes | None] = {}
    seen: Counter[str] = Counter()
    for raw, node in archive[1]:
        name = member_name(raw, node)
        seen[name] += 1
        uri = f"{prefix}{SEP}{member_segment(name, seen[name])}"
        data = node if isinstance(node, bytes) else build(node)
        if unsafe_name(name) or len(data) > LIMIT or (opened(node) and depth >= MAX_DEPTH):
            out[uri] = None
        elif isinstance(node, bytes) or not opened(node):
            out[uri] = data
        else:
            out.update(expected(node, uri, depth + 1))
    return out


def write(data: bytes, kind: str, folder: Path) -> Path:
    path = folder / f"{uuid.uuid4().hex}.{kind}"  # a new name each time: readers cache by path
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def fuzz_settings() -> Settings:
    return Settings(database_url="sqlite:///:memory:", max_image_bytes=LIMIT)


@FUZZ
@given(tree=TREES)
def test_every_member_is_accounted_for_and_reads_back(tree: Archive, fuzz_settings: Settings) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(build(tree), tree[0], Path(tmp)).resolve()
        items = list(source.iter_items(str(path), fuzz_settings))
        want = expected(tree, str(path))
        assert [i.uri for i in items if i.uri in want] == [i.uri for i in items]  # nothing more, no error item
        assert len({i.uri for i in items}) == len(items)  # one URI per member, duplicates included
        assert {i.uri: None if i.skip_reason else i.read() for i in items} == want
        for item in items:
            if item.skip_reason:
                with pytest.raises(ArchiveMemberError):
                    source.read(item.uri, fuzz_settings)
            else:
                assert source.read(item.uri, fuzz_settings) == want[item.uri]


def damaged_archives(children: st.SearchStrategy[DamagedNode]) -> st.SearchStrategy[Damaged]:
    cut = st.one_of(st.none(), st.floats(0, 1, exclude_max=True))
    return st.tuples(
        st.sampled_from(KINDS),
        st.lists(st.tuples(NAMES, children), max_size=5),
        cut,
        st.none() | st.integers(0, 1 << 16),
    )


def build_damaged(archive: Damaged) -> bytes:
    kind, members, cut, flip = archive
    data = archive_bytes(
        kind, [(member_name(n, node), node if isinstance(node, bytes) else build_damaged(node)) for n, node in members]
    )
    if flip is not None and data:
        at = flip % len(data)
        data = data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :]
    return data[: int(len(data) * cut)] if cut is not None else data


@FUZZ
@given(tree=damaged_archives(st.recursive(LEAVES, damaged_archives, max_leaves=8)))
def test_damaged_archives_never_raise_and_read_back_what_was_listed(tree: Damaged, fuzz_settings: Settings) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(build_damaged(tree), tree[0], Path(tmp)).resolve()
        if not source.claims(str(path)):
            return  # no archive signature left: the files source takes it as one (bad) image
        items = list(source.iter_items(str(path), fuzz_settings))  # whatever the damage: items, never a raise
        assert len({i.uri for i in items}) == len(items)
        for item in items:
            assert item.uri.startswith(f"{path}{SEP}")
            try:
                listed: bytes | None = None if item.skip_reason else item.read()
            except Exception:
                listed = None  # recorded as the item's error
            try:
                again: bytes | None = source.read(item.uri, fuzz_settings)
            except ArchiveMemberError:  # the one exception a reader raises
                again = None
            if listed is not None:
                assert again == listed, item.uri

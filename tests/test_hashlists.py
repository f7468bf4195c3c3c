"""Hash list files: the line format, building lists from images, the index, `moderator hashlist add`."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from moderator.cli.hashlist import app
from moderator.hashlists import (
    HammingIndex,
    HashEntry,
    HashKind,
    HashListError,
    add_images,
    codes,
    format_entry,
    hamming,
    hamming_codes,
    load_hash_list,
    parse_hash_list,
    phash_array,
    resolve_list_path,
)
from moderator.settings import Settings

SHA = "ab" * 32
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"  # threatexchange's example
MD5 = "cab08b36195edb1a1231d2d09fa450e0"


def _png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    # smooth random pattern: distinct perceptual hashes per seed
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_parse_reads_every_kind_both_forms_provenance_and_ignores_comments_and_blanks() -> None:
    text = (
        f"# header\n\nsha256:{SHA.upper()}  # leaked set, batch 3\n   phash:8f373714acfcf4d0\n"
        f'pdq {PDQ} source="Sample Data (x.csv:3)" tags="a1,b 2"\n'
        f"md5\t{MD5} tags=csam  # case 4\n"
    )
    entries = parse_hash_list(text, "bad.txt")
    assert [(e.kind, e.value, e.label, e.line, e.source, e.tags) for e in entries] == [
        (HashKind.SHA256, SHA, "leaked set, batch 3", 3, "", ()),
        (HashKind.PHASH, "8f373714acfcf4d0", "", 4, "", ()),
        (HashKind.PDQ, PDQ, "", 5, "Sample Data (x.csv:3)", ("a1", "b 2")),
        (HashKind.MD5, MD5, "case 4", 6, "", ("csam",)),
    ]


def test_a_written_line_reads_back_the_same_whatever_its_text() -> None:
    entry = HashEntry(HashKind.PDQ, PDQ, 'odd # "label"\nsecond line', 0, 'ncmec: "Industry" #1', ("a b", "c,d"))
    (back,) = parse_hash_list(format_entry(entry), "l.txt")
    assert (back.kind, back.value, back.line) == (HashKind.PDQ, PDQ, 1)
    assert back.label == 'odd # "label" second line'
    assert (back.source, back.tags) == ("ncmec: 'Industry' #1", ("a b", "c;d"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("tlsh:abcd", "bad.txt:2: unknown hash kind 'tlsh'"),
        ("sha256:abcd", "bad.txt:2: a sha256 hash has 64 hex digits, got 4"),
        ("md5 abcd", "bad.txt:2: a md5 hash has 32 hex digits, got 4"),
        (f"pdq {PDQ} owner=me", "bad.txt:2: unknown column 'owner'"),
        ("just words", "bad.txt:2: expected"),
    ],
)
def test_malformed_line_names_file_and_line(line: str, expected: str) -> None:
    with pytest.raises(HashListError, match=expected):
        parse_hash_list(f"# ok\n{line}\n", "bad.txt")


def test_hamming_counts_differing_bits() -> None:
    a = phash_array(["0000000000000000", "ffffffffffffffff"])
    b = phash_array(["0000000000000007"])
    assert hamming(a, b).tolist() == [[3], [61]]
    pdq = codes(["0" * 64, "f" * 64], HashKind.PDQ)
    assert hamming_codes(pdq, codes(["0" * 63 + "7"], HashKind.PDQ)).tolist() == [[3], [253]]


@pytest.mark.parametrize("scan_below", [0, 10**9])  # faiss's multi-index hashing, and the numpy scan
def test_the_index_finds_exactly_what_a_brute_force_scan_finds(scan_below: int) -> None:
    rng = np.random.default_rng(16)
    listed = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    # queries near listed hashes (0..40 bits flipped, across the threshold) and random ones
    near = listed[rng.integers(0, len(listed), 300)].copy()
    bits = np.unpackbits(near, axis=1)
    for row, flips in zip(bits, rng.integers(0, 41, len(bits)), strict=True):
        row[rng.choice(256, flips, replace=False)] ^= 1
    queries = np.vstack([np.packbits(bits, axis=1), rng.integers(0, 256, (100, 32), dtype=np.uint8)])
    truth = hamming_codes(queries, listed)
    for max_distance in (31, 8, 70):  # 70: past multi-index hashing, the flat faiss index
        index = HammingIndex(listed, max_distance, scan_below=scan_below)
        assert index.kind.startswith("faiss" if scan_below == 0 else "scan")
        found = index.search(queries)
        expected = [set(np.flatnonzero(row <= max_distance).tolist()) for row in truth]
        assert [{h.index for h in hits} for hits in found] == expected
        assert all(h.distance == truth[q, h.index] for q, hits in enumerate(found) for h in hits)
        assert all([h.distance for h in hits] == sorted(h.distance for h in hits) for hits in found)
        if max_distance == 31:
            assert sum(map(len, found)) > 100  # the test is not vacuous
    assert HammingIndex(listed[:0], 31).search(queries[:2]) == [[], []]


def test_bare_list_name_lives_beside_the_policies(tmp_path: Path) -> None:
    settings = Settings(policies=[tmp_path / "pol"])
    assert resolve_list_path("known_bad", settings) == tmp_path / "pol" / "lists" / "known_bad.txt"
    assert resolve_list_path("other/x.txt", settings) == Path("other/x.txt")


def test_add_writes_sha256_and_pdq_once_and_keeps_existing_lines(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes(_png(1))
    (images / "b.png").write_bytes(_png(2))
    (images / "notes.txt").write_text("not an image")
    target = tmp_path / "lists" / "bad.txt"
    target.parent.mkdir()
    target.write_text(f"# mine\nsha256:{SHA}  # kept")  # no trailing newline
    settings = Settings()

    first = add_images(target, [images / "a.png", images / "b.png"], settings)
    again = add_images(target, [images / "a.png"], settings)

    assert (first.added, first.present, again.added, again.present) == (4, 0, 0, 2)
    entries = load_hash_list(target).entries
    assert entries[0].value == SHA and entries[0].label == "kept"
    sha_a = hashlib.sha256(_png(1)).hexdigest()
    assert [e.value for e in entries if e.kind is HashKind.SHA256] == [SHA, sha_a, hashlib.sha256(_png(2)).hexdigest()]
    assert [e.kind for e in entries[1:]] == [HashKind.SHA256, HashKind.PDQ] * 2
    assert [e.label for e in entries[1:]] == ["a.png", "a.png", "b.png", "b.png"]
    assert target.read_text().splitlines()[2] == f"sha256 {sha_a}  # a.png"


def test_add_other_kinds_and_leaves_out_a_pdq_too_flat_to_match(tmp_path: Path) -> None:
    flat = tmp_path / "flat.png"
    Image.new("RGB", (80, 80), (200, 200, 200)).save(flat)
    kinds = (HashKind.MD5, HashKind.PDQ, HashKind.PHASH)
    report = add_images(tmp_path / "l.txt", [flat], Settings(), kinds=kinds)
    assert report.added == 2 and len(report.low_quality) == 1 and "PDQ quality 0 < 50" in report.low_quality[0]
    entries = load_hash_list(tmp_path / "l.txt").entries
    assert [e.kind for e in entries] == [HashKind.MD5, HashKind.PHASH]
    assert entries[0].value == hashlib.md5(flat.read_bytes()).hexdigest()


def test_add_reports_files_that_are_not_images(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not really a png")
    report = add_images(tmp_path / "l.txt", [bad], Settings())
    assert report.added == 0 and len(report.errors) == 1 and str(bad) in report.errors[0]
    assert not (tmp_path / "l.txt").exists()


def test_cli_add_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.png").write_bytes(_png(3))
    (folder / "sub" / "two.png").write_bytes(_png(4))
    policies = tmp_path / "policies"
    policies.mkdir()

    runner = CliRunner()
    result = runner.invoke(app, ["add", str(folder), "--list", "team", "--policy", str(policies), "--label", "case 7"])
    assert result.exit_code == 0, result.output
    listed = policies / "lists" / "team.txt"
    assert "4 line(s) added" in result.output

    entries = load_hash_list(listed).entries
    assert {e.value for e in entries if e.kind is HashKind.SHA256} == {
        hashlib.sha256(_png(3)).hexdigest(),
        hashlib.sha256(_png(4)).hexdigest(),
    }
    assert len([e for e in entries if e.kind is HashKind.PDQ]) == 2
    assert {e.label for e in entries} == {"case 7"}

    again = runner.invoke(app, ["add", str(folder / "one.png"), "--list", str(listed)])
    assert again.exit_code == 0 and "0 line(s) added, 2 already present" in again.output
    phash = runner.invoke(app, ["add", str(folder / "one.png"), "--list", str(listed), "--kind", "phash"])
    assert phash.exit_code == 0 and "1 line(s) added" in phash.output
    wrong = runner.invoke(app, ["add", str(folder / "one.png"), "--list", str(listed), "--kind", "tlsh"])
    assert wrong.exit_code == 2 and "--kind is one of" in wrong.output


def test_cli_add_missing_path_fails(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["add", str(tmp_path / "nope"), "--list", str(tmp_path / "l.txt")])
    assert result.exit_code == 2


# --- H4: lists a user adds live in their data directory, never in the installed package -----------


def _files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_bare_list_name_for_the_shipped_policies_is_in_the_user_data_dir(tmp_path: Path) -> None:
    from moderator.settings import SHIPPED_POLICIES

    settings = Settings(hash_lists_dir=tmp_path / "mine")
    assert settings.policies == [SHIPPED_POLICIES]
    assert resolve_list_path("known_bad", settings) == tmp_path / "mine" / "known_bad.txt"
    assert Settings().hash_lists_dir.is_relative_to(Path(os.environ["XDG_DATA_HOME"]))  # platformdirs' data dir


def test_hashlist_add_leaves_the_shipped_policies_alone_and_the_shipped_policy_finds_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moderator.cli import app as moderator
    from moderator.settings import SHIPPED_POLICIES

    monkeypatch.setenv("MODERATOR_HASH_LISTS_DIR", str(tmp_path / "mine"))
    shipped = _files_under(SHIPPED_POLICIES)
    bad = tmp_path / "bad.png"
    bad.write_bytes(_png(11))

    added = CliRunner().invoke(moderator, ["hashlist", "add", str(bad), "--list", "known_bad"])
    assert added.exit_code == 0, added.output
    assert added.output.startswith(f"{tmp_path / 'mine' / 'known_bad.txt'}: 2 line(s) added")
    assert _files_under(SHIPPED_POLICIES) == shipped  # nothing written into the package

    scanned = CliRunner().invoke(
        moderator,
        ["scan", str(bad), "--policy", str(SHIPPED_POLICIES / "known_bad.yaml"), "--json"]
        + ["--database-url", f"sqlite:///{tmp_path / 'store.db'}"],
    )
    assert scanned.exit_code == 0, scanned.output
    summary = json.loads(scanned.output[scanned.output.index("{") :])
    assert summary["decisions"] == {"block": 1}


def test_a_policy_reads_its_own_list_and_the_users_list_of_the_same_name(tmp_path: Path) -> None:
    from moderator.hashlists import policy_lists

    (tmp_path / "pol" / "lists").mkdir(parents=True)
    (tmp_path / "pol" / "lists" / "team.txt").write_text(f"sha256:{SHA}  # shipped\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "team.txt").write_text(f"sha256:{'cd' * 32}  # mine\n")
    settings = Settings(hash_lists_dir=tmp_path / "mine")

    lists = policy_lists(["lists/team.txt"], tmp_path / "pol", settings)
    assert [(hl.name, [e.value for e in hl.entries]) for hl in lists] == [
        ("lists/team.txt", [SHA]),
        (str(tmp_path / "mine" / "team.txt"), ["cd" * 32]),
    ]
    (tmp_path / "pol" / "lists" / "team.txt").unlink()
    assert [hl.name for hl in policy_lists(["lists/team.txt"], tmp_path / "pol", settings)] == [
        str(tmp_path / "mine" / "team.txt")
    ]
    with pytest.raises(HashListError, match="cannot read hash list"):
        policy_lists(["lists/other.txt"], tmp_path / "pol", settings)

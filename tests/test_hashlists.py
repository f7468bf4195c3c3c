"""Hash list files: the exchange format, building lists from images, `moderator hashlist add`."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from moderator.cli.hashlist import app
from moderator.hashlists import (
    HashKind,
    HashListError,
    add_images,
    hamming,
    load_hash_list,
    parse_hash_list,
    phash_array,
    resolve_list_path,
)
from moderator.settings import Settings

SHA = "ab" * 32


def _png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    # smooth random pattern: distinct perceptual hashes per seed
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_parse_reads_both_kinds_labels_and_ignores_comments_and_blanks() -> None:
    text = f"# header\n\nsha256:{SHA.upper()}  # leaked set, batch 3\n   phash:8f373714acfcf4d0\n"
    entries = parse_hash_list(text, "bad.txt")
    assert [(e.kind, e.value, e.label, e.line) for e in entries] == [
        (HashKind.SHA256, SHA, "leaked set, batch 3", 3),
        (HashKind.PHASH, "8f373714acfcf4d0", "", 4),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [("md5:abcd", "bad.txt:2: expected"), ("sha256:abcd", "bad.txt:2: a sha256 hash has 64 hex digits, got 4")],
)
def test_malformed_line_names_file_and_line(line: str, expected: str) -> None:
    with pytest.raises(HashListError, match=expected):
        parse_hash_list(f"# ok\n{line}\n", "bad.txt")


def test_hamming_counts_differing_bits() -> None:
    a = phash_array(["0000000000000000", "ffffffffffffffff"])
    b = phash_array(["0000000000000007"])
    assert hamming(a, b).tolist() == [[3], [61]]


def test_bare_list_name_lives_beside_the_policies(tmp_path: Path) -> None:
    settings = Settings(policies=[tmp_path / "pol"])
    assert resolve_list_path("known_bad", settings) == tmp_path / "pol" / "lists" / "known_bad.txt"
    assert resolve_list_path("other/x.txt", settings) == Path("other/x.txt")


def test_add_writes_sha256_and_phash_once_and_keeps_existing_lines(tmp_path: Path) -> None:
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
    assert [e.label for e in entries[1:]] == ["a.png", "a.png", "b.png", "b.png"]


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
    assert len([e for e in entries if e.kind is HashKind.PHASH]) == 2
    assert {e.label for e in entries} == {"case 7"}

    again = runner.invoke(app, ["add", str(folder / "one.png"), "--list", str(listed)])
    assert again.exit_code == 0 and "0 line(s) added, 2 already present" in again.output


def test_cli_add_missing_path_fails(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["add", str(tmp_path / "nope"), "--list", str(tmp_path / "l.txt")])
    assert result.exit_code == 2

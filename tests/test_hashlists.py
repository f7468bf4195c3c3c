"""Hash list files: the exchange format, building lists from images, `moderator hashlist add`."""

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

"""What the CLI prints is the text as given: never re-read as rich markup, never wrapped or cropped off a terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.table import Table
from typer.testing import CliRunner

from moderator.cli import app
from moderator.cli.common import PlainConsole

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def deep(tmp_path: Path) -> Path:
    """A path far longer than any terminal (a CI checkout in a deep temporary folder)."""
    return tmp_path.joinpath(*[f"level-{i:02d}-of-a-deep-temporary-checkout" for i in range(6)])


def test_a_policy_error_prints_the_pattern_as_written(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\nclasses:\n  a: {prompts: [a cat]}\n")
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    assert "'^[a-z0-9][a-z0-9_-]*$'" in result.output, result.output


def test_a_long_path_in_an_error_stays_on_one_line(tmp_path: Path) -> None:
    missing = deep(tmp_path) / "gone.png"
    result = runner.invoke(app, ["hashlist", "add", str(missing), "--list", str(tmp_path / "l.txt")])
    assert result.exit_code == 2
    assert f"error: no such file or folder: {missing}\n" in result.output, result.output


def test_typer_usage_errors_are_one_plain_line(tmp_path: Path) -> None:
    value = "no-such-decision-" * 8
    result = runner.invoke(app, ["review", "list", "--decision", value])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert "'--decision'" in line and f"'{value}' is not one of" in line, result.output
    assert not set("│╭╮╰╯─") & set(result.output)  # no box drawn around it


def test_help_is_not_wrapped_off_a_terminal() -> None:
    result = runner.invoke(app, ["scan", "--help"])
    assert result.exit_code == 0
    help_line = (
        "open_clip pretrained tag, checkpoint path, hf-hub:ORG/NAME, or 'none' (random weights: benchmarks only) "
        "(env MODERATOR_PRETRAINED)."
    )
    assert any(line.startswith("  --pretrained") and line.endswith(help_line) for line in result.output.splitlines())


def test_a_real_pipe_gets_whole_lines_whatever_the_terminal_width(tmp_path: Path) -> None:
    missing = deep(tmp_path) / "gone.png"
    env = {**os.environ, "COLUMNS": "40"}
    done = subprocess.run(
        [sys.executable, "-c", "from moderator.cli import main; main()", "hashlist", "add", str(missing), "-l", "x"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == f"error: no such file or folder: {missing}\n"


def test_the_console_prints_markup_and_emoji_codes_literally() -> None:
    buf = io.StringIO()
    PlainConsole(file=buf).print("[red]x[/red] [bold]b :smile: ^[a-z]*$")
    assert buf.getvalue() == "[red]x[/red] [bold]b :smile: ^[a-z]*$\n"


def test_tables_keep_long_cells_and_titles_whole_off_a_terminal() -> None:
    buf = io.StringIO()
    uri = "s3://bucket/" + "/".join(["a-long-folder-name"] * 12) + "/[red]image[/red].jpg"
    table = Table("item", "score", title=uri)
    table.add_row(uri, "0.93")
    PlainConsole(file=buf).print(table)
    assert buf.getvalue().count(uri) == 2  # title and cell, whole and literal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_text_wraps_to_its_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    buf = _Terminal()
    PlainConsole(file=buf).print("word " * 20)
    assert max(len(line) for line in buf.getvalue().splitlines()) <= 40


def test_no_rich_markup_is_left_in_cli_code() -> None:
    """The consoles read no markup: a `[red]` in a message would be printed as is."""
    import re

    tag = re.compile(r"\[/?(?:red|yellow|green|blue|cyan|magenta|bold|dim|italic)\b[^\]]*\]")
    offenders = [
        f"{path.name}:{n}"
        for path in sorted((ROOT / "moderator" / "cli").glob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if tag.search(line)
    ]
    assert not offenders, f"rich markup in CLI messages (use style= or common.warn/error): {offenders}"


def test_validate_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    missing = deep(tmp_path) / "x.yaml"
    result = runner.invoke(app, ["policy", "validate", str(missing)])
    assert result.exit_code == 1
    assert result.output == f"{missing}: no such policy file or folder\n"

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from moderator.cli import app
from moderator.settings import SHIPPED_POLICIES

runner = CliRunner()


def test_validate_shipped_policies_passes() -> None:
    result = runner.invoke(app, ["policy", "validate", str(SHIPPED_POLICIES)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_validate_names_file_line_and_field_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ndescription: x\nmode: exclusive\nclasses:\n  a:\n    prompts: [a cat]\n    threshold: 1.5\n"
        "    action: tag\n"
    )
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:7" in result.output
    assert "classes.a.threshold" in result.output


def test_every_subcommand_has_help() -> None:
    from typer.main import get_command

    cli = get_command(app)
    for name in cli.commands:  # type: ignore[attr-defined]
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output

"""The README is the user's manual: these fail when a setting or plugin is undocumented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from moderator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    field = Settings.model_fields[name]
    assert field.description, f"Settings.{name} has no description"
    assert f"`MODERATOR_{name.upper()}`" in README, f"MODERATOR_{name.upper()} is not in README.md's settings table"


def _entry_points() -> list[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [(group, name) for group, eps in project["entry-points"].items() for name in eps]


@pytest.mark.parametrize(("group", "name"), _entry_points())
def test_every_builtin_plugin_is_documented(group: str, name: str) -> None:
    row = re.search(rf"^\| `{re.escape(group)}` \| `{re.escape(name)}` \|", README, re.MULTILINE)
    assert row, f"plugin {group}:{name} is not in README.md's plugin table"


def test_readme_commands_exist() -> None:
    from typer.main import get_command

    from moderator.cli import app

    cli = get_command(app)
    for command in re.findall(r"^    moderator (\w+)", README, re.MULTILINE):
        assert command in cli.commands, f"README shows `moderator {command}` but there is no such command"  # type: ignore[attr-defined]

"""The README is the user's manual: these fail when a setting or plugin is undocumented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

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


# --- every sub-command and flag that exists is in README's Commands section ------------------

_COMMANDS_SECTION = README[README.index("## Commands\n") : README.index("\n## ", README.index("## Commands\n") + 1)]
_COMMAND_LINES = re.findall(r"^    moderator (.+)$", _COMMANDS_SECTION, re.MULTILINE)
_COMMON = _COMMANDS_SECTION[_COMMANDS_SECTION.index("Common flags:") :].split("\n\n")[0]
_FLAG = r"(?<![\w-]){}(?![\w-])"


def _leaf_commands() -> list[tuple[list[str], Any]]:
    from typer.main import get_command

    from moderator.cli import app

    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str]) -> None:
        subs = getattr(command, "commands", None)
        if not subs:
            found.append((path, command))
            return
        for name in subs:
            walk(subs[name], [*path, name])

    walk(get_command(app), [])
    return found


def _readme_lines(path: list[str]) -> list[str]:
    words = " ".join(path)
    return [line for line in _COMMAND_LINES if line == words or line.startswith(words + " ")]


def test_every_command_and_flag_is_in_the_readme() -> None:
    missing = []
    for path, command in _leaf_commands():
        lines = _readme_lines(path)
        if not lines:
            missing.append(f"moderator {' '.join(path)}")
            continue
        for param in command.params:
            flags = [o for o in param.opts if o.startswith("--")]
            if param.param_type_name != "option" or not flags or flags == ["--help"]:
                continue
            documented = lines + [_COMMON]
            if not any(re.search(_FLAG.format(re.escape(f)), text) for f in flags for text in documented):
                missing.append(f"moderator {' '.join(path)} {flags[0]}")
    assert not missing, f"README.md's Commands section does not mention: {missing}"


def test_every_flag_the_readme_shows_exists() -> None:
    leaves = {" ".join(path): command for path, command in _leaf_commands()}
    common = set(re.findall(r"--[\w-]+", _COMMON))
    stale = []
    for line in _COMMAND_LINES:
        usage = line.split("  #")[0]
        name = max((n for n in leaves if usage == n or usage.startswith(n + " ")), key=len, default=None)
        if name is None:
            stale.append(f"moderator {usage.split()[0]}...: no such command")
            continue
        known = {o for p in leaves[name].params for o in [*p.opts, *p.secondary_opts]} | common
        stale += [f"moderator {name} {f}" for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", usage) if f not in known]
    assert not stale, f"README.md shows flags or commands that do not exist: {stale}"


def test_readme_names_exactly_the_pages_that_answer_without_a_login(tmp_path: Path) -> None:
    from fastapi.routing import iter_route_contexts
    from fastapi.testclient import TestClient

    from moderator.review.app import create_app
    from moderator.store import Store

    sentence = README[README.index("Without a login only") :].split("Everything else")[0]
    documented = set(re.findall(r"`(?:GET |POST )?(/[a-z0-9/]*)`", sentence))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'review.db'}")
    app = create_app(settings, Store(settings.database_url))
    client = TestClient(app, follow_redirects=False)
    answered, paths = set(), set()
    for route in iter_route_contexts(app.routes):
        path = route.path or ""
        paths.add(path)
        methods = getattr(route, "methods", None)
        if methods is None:  # a mount: static files
            some_file = next((ROOT / "moderator" / "review" / path.strip("/")).iterdir())
            requests = [("GET", f"{path}/{some_file.name}")]
        else:
            requests = [(method, re.sub(r"\{[^}]+\}", "1", path)) for method in methods]
        for method, url in requests:
            r = client.request(method, url, headers={"Accept": "application/json"})
            if r.status_code not in (401, 403) and not r.headers.get("location", "").startswith("/login"):
                answered.add(path)
    assert documented <= paths, f"README names pages that do not exist: {documented - paths}"
    assert answered <= documented, f"these answer without a login but README does not say so: {answered - documented}"

"""Start-up: `moderator --help` and a command's start import no heavy library the command does not use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moderator.cli import COMMANDS, load_command

HEAVY = ("torch", "open_clip", "boto3", "fastapi", "pyarrow")


def imported_after(code: str) -> list[str]:
    """The HEAVY modules loaded in a fresh interpreter after running `code`."""
    probe = (
        "import json, sys\n"
        f"try:\n    exec({code!r})\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    loaded: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return loaded


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert imported_after("import moderator.cli") == []


@pytest.mark.parametrize("argv", [["--help"], ["scan", "--help"], ["hashlist", "add", "--help"], ["users", "--help"]])
def test_help_loads_no_heavy_library(argv: list[str]) -> None:
    code = f"import sys; sys.argv = ['moderator', *{argv!r}]\nfrom moderator.cli import main\nmain()"
    assert imported_after(code) == []


def test_no_command_module_imports_a_heavy_library_at_import_time() -> None:
    """Every command registered (every module imported, every click command built): still none loaded."""
    code = "from moderator.cli import COMMANDS, load_command\nfor name in COMMANDS:\n    load_command(name)"
    assert imported_after(code) == []


def test_a_local_scan_start_does_not_load_boto3_fastapi_or_pyarrow() -> None:
    """Resolving a local folder loads every source plugin (the S3 one included) but not boto3."""
    code = "from moderator import sources\nsources.resolve('.')"
    assert imported_after(code) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_listing_shows_each_command_own_summary(name: str) -> None:
    own = load_command(name).get_short_help_str(limit=10**6)
    assert COMMANDS[name].summary == own, f"update COMMANDS[{name!r}].summary in moderator/cli/__init__.py"

"""`moderator policy ...`: validate, test and diff policy files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moderator.cli import policy_tools
from moderator.cli.common import console, out

app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
app.command("diff")(policy_tools.diff)
app.command("test")(policy_tools.test)


@app.command("validate")
def validate(files: Annotated[list[Path], typer.Argument(help="Policy files or folders.")]) -> None:
    """Check policy files; every error names the file, line and field. Exit code 1 when any is invalid."""
    from moderator.policy.load import expand_paths, validate_files

    errors = validate_files(files)
    for err in errors:
        console.print(str(err), style="red")
    if errors:
        raise typer.Exit(1)
    out.print(f"{len(expand_paths(files))} policy file(s) valid")

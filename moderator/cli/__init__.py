"""`moderator`: one command, sub-commands by concern (each module stays thin)."""

from __future__ import annotations

import typer

from moderator.cli import export, policy, scan

app = typer.Typer(
    name="moderator",
    help="Scan images with CLIP and other scorers against YAML policies; store tags, flags and decisions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("scan")(scan.scan)
app.command("export")(export.export)
app.add_typer(policy.app, name="policy")


def main() -> None:
    app()

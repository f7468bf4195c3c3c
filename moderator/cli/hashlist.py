"""`moderator hashlist ...`: build and extend known-bad hash lists from images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moderator.cli.common import fail, make_settings, out, warn

app = typer.Typer(help="Known-bad hash lists (plain text: sha256:<hex> and phash:<hex> lines).", no_args_is_help=True)


@app.callback()
def hashlist() -> None:
    """Known-bad hash lists: one hash per line, exchangeable as plain text."""


@app.command("add")
def add(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).")],
    list_name: Annotated[
        str,
        typer.Option(
            "--list",
            "-l",
            help="A NAME or a path to a .txt file; created if missing. With the shipped policies, NAME is "
            "MODERATOR_HASH_LISTS_DIR/NAME.txt in your data directory, which the shipped known_bad policies read "
            "(--list known_bad); with --policy FOLDER it is FOLDER/lists/NAME.txt.",
        ),
    ],
    label: Annotated[
        str, typer.Option("--label", help="Comment written after each hash (default: the file name).")
    ] = "",
    policy: Annotated[
        list[Path] | None,
        typer.Option("--policy", "-p", help="Your policy folder: a bare --list NAME goes to FOLDER/lists/NAME.txt."),
    ] = None,
) -> None:
    """Append the sha256 and phash lines of each image to a list; hashes already there are not repeated."""
    from moderator.hashlists import HashListError, add_images, iter_image_files, resolve_list_path

    settings = make_settings(policies=policy)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or folder: {', '.join(missing)}")
    target = resolve_list_path(list_name, settings)
    try:
        report = add_images(target, iter_image_files(paths), settings, label=label)
    except (HashListError, OSError) as exc:
        fail(str(exc))
    for err in report.errors:
        warn(err, label="skipped")
    summary = f"{report.added} line(s) added, {report.present} already present, {len(report.errors)} skipped"
    out.print(f"{target}: {summary}")
    if report.errors and not report.added and not report.present:
        raise typer.Exit(1)

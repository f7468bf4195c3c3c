"""`moderator hashlist ...`: build, import, export and fetch known-bad hash lists (see docs/hashlists.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moderator.cli.common import fail, make_settings, out, warn

app = typer.Typer(help="Known-bad hash lists (PDQ, MD5, SHA-256): add, import, export, fetch.", no_args_is_help=True)

LIST_HELP = (
    "A NAME or a path to a .txt file; created if missing. With the shipped policies, NAME is "
    "MODERATOR_HASH_LISTS_DIR/NAME.txt in your data directory, which the shipped known_bad policies read "
    "(--list known_bad); with --policy FOLDER it is FOLDER/lists/NAME.txt."
)
ListOpt = Annotated[str, typer.Option("--list", "-l", help=LIST_HELP)]
PolicyOpt = Annotated[
    list[Path] | None,
    typer.Option("--policy", "-p", help="Your policy folder: a bare --list NAME is FOLDER/lists/NAME.txt."),
]


@app.callback()
def hashlist() -> None:
    """Known-bad hash lists: one hash a line (pdq, md5, sha256, phash) with its provenance, plain text."""


@app.command("add")
def add(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively).")],
    list_name: ListOpt,
    label: Annotated[
        str, typer.Option("--label", help="Comment written after each hash (default: the file name).")
    ] = "",
    policy: PolicyOpt = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind", help="Kinds of hash to write, repeatable: pdq, md5, sha256, phash (default: sha256, pdq)."
        ),
    ] = None,
) -> None:
    """Append the sha256 and PDQ lines of each image to a list; hashes already there are not repeated.
    An image whose PDQ quality is below MODERATOR_HASHLIST_PDQ_MIN_QUALITY (flat, near-blank) gets no PDQ line."""
    from moderator.hashlists import (
        DEFAULT_ADD_KINDS,
        HashKind,
        HashListError,
        add_images,
        iter_image_files,
        resolve_list_path,
    )

    try:
        kinds = tuple(HashKind(k.lower()) for k in kind) if kind else DEFAULT_ADD_KINDS
    except ValueError:
        fail(f"--kind is one of {', '.join(k.value for k in HashKind)}, got {kind}")
    settings = make_settings(policies=policy)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or folder: {', '.join(missing)}")
    target = resolve_list_path(list_name, settings)
    try:
        report = add_images(target, iter_image_files(paths), settings, label=label, kinds=kinds)
    except (HashListError, OSError) as exc:
        fail(str(exc))
    for err in report.errors:
        warn(err, label="skipped")
    for low in report.low_quality:
        warn(f"{low}: no pdq line (too flat to match on)", label="low quality")
    summary = f"{report.added} line(s) added, {report.present} already present, {len(report.errors)} skipped"
    out.print(f"{target}: {summary}", highlight=False, markup=False)
    if report.errors and not report.added and not report.present:
        raise typer.Exit(1)


FORMAT_HELP = (
    "auto (by name and content), plain (this tool's lines), csv (threatexchange dataset --csv), "
    "threatexchange (its file exchange and `dataset -P` lines, simple.<TYPE>.te files)"
)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A list someone gave you.", exists=True, dir_okay=False)],
    list_name: ListOpt,
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "auto",
    policy: PolicyOpt = None,
) -> None:
    """Append a list in an exchange format to a list; each entry keeps its source (file:line, collab) and tags.
    Nothing is written when a line is malformed (the error names it)."""
    from moderator.hashlists import HashListError, append_entries, resolve_list_path
    from moderator.hashlists.formats import ListFormat, read_list_file

    settings = make_settings(policies=policy)
    try:
        imported = read_list_file(file, ListFormat(fmt))
        target = resolve_list_path(list_name, settings)
        added, present = append_entries(target, imported.entries)
    except ValueError as exc:  # HashListError, or an unknown --format
        fail(str(exc) if isinstance(exc, HashListError) else f"--format: one of {', '.join(ListFormat)}, got {fmt!r}")
    except OSError as exc:
        fail(str(exc))
    for what in imported.unsupported[:5]:
        warn(f"{what}: not an image hash", label="skipped")
    extra = f", {imported.negative} marked not harmful left out" if imported.negative else ""
    extra += f", {len(imported.unsupported)} of other signal types skipped" if imported.unsupported else ""
    out.print(f"{target}: {added} line(s) added, {present} already present{extra}", highlight=False, markup=False)


@app.command("export")
def export(
    list_name: ListOpt,
    fmt: Annotated[str, typer.Option("--format", "-f", help="plain, csv or threatexchange (as for import).")] = "plain",
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of standard output.")] = None,
    policy: PolicyOpt = None,
) -> None:
    """Write a list in an exchange format (csv keeps source and tags; threatexchange keeps the hashes only)."""
    from moderator.hashlists import HashListError, load_hash_list, resolve_list_path
    from moderator.hashlists.formats import ListFormat, write_list

    settings = make_settings(policies=policy)
    try:
        chosen = ListFormat(fmt)
    except ValueError:
        fail(f"--format: one of plain, csv, threatexchange, got {fmt!r}")
    path = resolve_list_path(list_name, settings)
    if not path.exists():
        fail(f"no list at {path}")
    try:
        text = write_list(load_hash_list(path).entries, chosen, collab=path.stem)
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
    except (HashListError, OSError) as exc:
        fail(str(exc))


@app.command("fetch")
def fetch(
    exchange: Annotated[str, typer.Option("--exchange", "-e", help="ncmec or stopncii (needs their credentials).")],
    list_name: ListOpt,
    policy: PolicyOpt = None,
) -> None:
    """Append every current entry of a hash-sharing programme through threatexchange's exchange clients.
    Credentials: TX_NCMEC_CREDENTIALS=user:password, TX_STOPNCII_KEYS=fetch_key,subscription_key[,base_url]."""
    from moderator.hashlists import HashListError, append_entries, resolve_list_path
    from moderator.hashlists.exchange import ExchangeError, fetch_entries

    settings = make_settings(policies=policy)
    target = resolve_list_path(list_name, settings)
    try:
        entries = fetch_entries(exchange, settings)
        added, present = append_entries(target, entries)
    except (ExchangeError, HashListError, OSError) as exc:
        fail(str(exc))
    out.print(f"{target}: {added} line(s) added, {present} already present", highlight=False, markup=False)

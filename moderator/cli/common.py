"""What every command shares: settings with CLI overrides, the store, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from moderator.settings import Settings

console = Console(stderr=True)
out = Console()

DatabaseOpt = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL of the store (env MODERATOR_DATABASE_URL).")
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="open_clip model name (env MODERATOR_MODEL).")]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        help="open_clip pretrained tag, checkpoint path, hf-hub:ORG/NAME, or 'none' (random weights: benchmarks only) "
        "(env MODERATOR_PRETRAINED).",
    ),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda (env MODERATOR_DEVICE).")]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Images per model batch (env MODERATOR_BATCH_SIZE).")
]
PolicyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--policy", "-p", help="Policy file or folder; repeatable (default: MODERATOR_POLICIES, the shipped set)."
    ),
]


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def make_settings(**overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        fail(f"setting {field}: {first['msg']} (flag --{field.replace('_', '-')} or MODERATOR_{field.upper()})")


def open_store(settings: Settings) -> Any:
    from moderator.store import Store

    try:
        return Store(settings.database_url)
    except Exception as exc:  # unreachable server, bad URL, unwritable file: one line, then the fix
        fail(f"cannot open the store {settings.database_url!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}")

"""What every command shares: settings with CLI overrides, the store, plain output, one-line errors.

Output goes through `out` (stdout) and `console` (stderr). Both print text as given: no
rich markup, highlighting or emoji codes are read in it, so a path, a pattern or a message
is never mangled (colour is a `style=` argument, or `warn`/`error`). On a terminal lines
wrap to its width; into a pipe or a file nothing is wrapped or cropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from moderator.errors import SourceError
from moderator.settings import Settings

UNWRAPPED = 1_000_000  # console width when not writing to a terminal


class PlainConsole(Console):
    """A rich console that never reads markup in text, and wraps only on a terminal."""

    def __init__(self, *, stderr: bool = False, file: IO[str] | None = None) -> None:
        super().__init__(stderr=stderr, file=file, markup=False, highlight=False, emoji=False)

    @property  # type: ignore[override]
    def size(self) -> ConsoleDimensions:
        dims = Console.size.fget(self)  # type: ignore[attr-defined]
        if _isatty(self.file):
            return dims  # type: ignore[no-any-return]
        return ConsoleDimensions(UNWRAPPED, dims.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


console = PlainConsole(stderr=True)
out = PlainConsole()

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


def error(message: str) -> None:
    """`error: MESSAGE` on stderr, the message exactly as given."""
    console.print(Text.assemble(("error:", "red"), " ", message))


def warn(message: str, label: str = "warning") -> None:
    """`LABEL: MESSAGE` on stderr, the message exactly as given."""
    console.print(Text.assemble((f"{label}:", "yellow"), " ", message))


def fail(message: str, code: int = 2) -> NoReturn:
    error(message)
    raise typer.Exit(code)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Errors a user can fix (a source that cannot be listed or read) end the command in one line."""
    try:
        yield
    except SourceError as exc:
        fail(str(exc))


def make_settings(**overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        fail(f"setting {field}: {first['msg']} (flag --{field.replace('_', '-')} or MODERATOR_{field.upper()})")


def open_store(settings: Settings, *, create: bool = False, announce: bool = False) -> Any:
    """The store of settings.database_url.

    create=False (commands that only read, or change what is there): a store that does not
    exist is refused in one line, never created empty. create=True (scans): made when missing.
    announce (commands that write): say on stderr where the store is.
    """
    from moderator.store import Store, StoreNotFound

    try:
        store = Store(settings.database_url, create=create)
    except StoreNotFound as exc:
        fail(str(exc))
    except Exception as exc:  # unreachable server, bad URL, unwritable file: one line, then the fix
        fail(f"cannot open the store {settings.database_url!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    if announce:
        console.print(f"store: {store.location}")
    return store

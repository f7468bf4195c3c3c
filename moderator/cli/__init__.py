"""`moderator`: one command, sub-commands by concern (each module stays thin).

Sub-commands are registered by name and imported on first use: `moderator --help` imports
no command module, `moderator scan ...` imports cli/scan.py only, and each command imports
its heavy dependencies (torch, open_clip, boto3, FastAPI, pyarrow) inside its function.
Help and errors are plain text (no rich markup), wrapped to the terminal on a terminal and
never wrapped into a pipe or a file.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import typer
from typer import _click  # typer vendors click: its Context and Command classes live here
from typer.core import TyperGroup
from typer.main import get_command_from_info, get_group_from_info
from typer.models import CommandInfo, TyperInfo

UNWRAPPED = 1_000_000  # help width when not a terminal: no line is ever wrapped
TERMINAL_HELP_WIDTH = 120


@dataclass(frozen=True)
class Entry:
    target: str  # "module:attribute": a command function, or a typer.Typer of sub-commands
    summary: str  # its line in `moderator --help` (tests/cli/test_startup.py: the command's own first sentence)


COMMANDS: dict[str, Entry] = {
    # In-process scanning and results
    "scan": Entry("moderator.cli.scan:scan", "Scan images against the policies and store tags, flags and decisions."),
    "export": Entry(
        "moderator.cli.export:export",
        "Export one row per item: uri, sha256, status, error, decision, tags, flags, per-policy scores and versions.",
    ),
    "policy": Entry("moderator.cli.policy:app", "Work with policy files."),
    "hashlist": Entry(
        "moderator.cli.hashlist:app", "Known-bad hash lists (PDQ, MD5, SHA-256): add, import, export, fetch."
    ),
    # Policy lifecycle: re-score stored embeddings, evaluate, train probes, search
    "rescore": Entry(
        "moderator.cli.rescore:rescore",
        "Re-score every stored item with the policies and store their results under the new versions.",
    ),
    "eval": Entry(
        "moderator.cli.eval:eval_",
        "Evaluate a policy on labelled images: per-class precision, recall, F1, support; the confusion matrix; "
        "suggested thresholds for a target precision or recall; PR curves (PNG) and a JSON report.",
    ),
    "probe": Entry("moderator.cli.probe:app", "Linear probes: classifiers trained on CLIP embeddings."),
    "search": Entry(
        "moderator.cli.search:search",
        "Search stored items by text or by an example image (cosine similarity on their CLIP embeddings: exact for "
        "small stores, else through the approximate index on disk).",
    ),
    # Queue and workers
    "enqueue": Entry("moderator.cli.enqueue:enqueue", "Queue a scan for the workers and print its job id."),
    "worker": Entry(
        "moderator.cli.worker:worker",
        "Take queued batches, score them with the same pipeline as `moderator scan`, store the results.",
    ),
    "jobs": Entry(
        "moderator.cli.jobs:jobs",
        "List queued scans with their progress (done, errors, remaining, rate), or follow one with --wait.",
    ),
    "listen": Entry(
        "moderator.cli.listen:listen",
        "Long-poll SQS for S3 events: new objects are enqueued for scanning, removed ones marked deleted.",
    ),
    "deliver": Entry(
        "moderator.cli.deliver:deliver",
        "Deliver decision events (webhooks, S3 actions) from the outbox until stopped; run any number of replicas.",
    ),
    "webhooks": Entry(
        "moderator.cli.webhooks:app",
        "Decision webhooks: endpoints that receive signed item.decided and review.decided events.",
    ),
    "actions": Entry(
        "moderator.cli.s3_actions:app",
        "S3 actions on decisions: tag or quarantine s3:// objects (rules: MODERATOR_S3_ACTIONS).",
    ),
    # People
    "serve": Entry(
        "moderator.cli.serve:serve",
        "Serve the review UI and API (create a first admin with `moderator users add NAME --role admin`).",
    ),
    "review": Entry("moderator.cli.review:app", "Work through the review queue from the terminal."),
    "users": Entry(
        "moderator.cli.users:app",
        "Users of the review UI and API (reviewers decide; admins also manage users).",
    ),
}


def load_command(name: str) -> _click.Command:
    """Import the module of one sub-command and build its click command (plain-text help)."""
    module, _, attribute = COMMANDS[name].target.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        return get_group_from_info(
            TyperInfo(target, name=name), pretty_exceptions_short=True, suggest_commands=True, rich_markup_mode=None
        )
    return get_command_from_info(
        CommandInfo(name=name, callback=target), pretty_exceptions_short=True, rich_markup_mode=None
    )


class LazyCommands(MutableMapping[str, _click.Command]):
    """The sub-commands by name; a command's module is imported when the command is first looked up."""

    def __init__(self) -> None:
        self._loaded: dict[str, _click.Command] = {}

    def __getitem__(self, name: str) -> _click.Command:
        if name not in self._loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("sub-commands are registered in moderator.cli.COMMANDS")

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (n for n in self._loaded if n not in COMMANDS)

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._loaded))


class ModeratorGroup(TyperGroup):
    """The root command: lazy sub-commands, plain help sized to the terminal, one-line errors."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands()

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        # From the registry: listing the commands imports none of them.
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.summary) for name, entry in COMMANDS.items()])

    def make_context(
        self, info_name: str | None, args: list[str], parent: _click.Context | None = None, **extra: Any
    ) -> _click.Context:
        if parent is None:  # sub-command contexts inherit the widths
            if _isatty(sys.stdout):
                extra.setdefault("max_content_width", TERMINAL_HELP_WIDTH)
            else:
                extra.setdefault("terminal_width", UNWRAPPED)
                extra.setdefault("max_content_width", UNWRAPPED)
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: _click.Context) -> Any:
        from moderator.cli.common import one_line_errors

        with one_line_errors():
            return super().invoke(ctx)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


app = typer.Typer(
    name="moderator",
    cls=ModeratorGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def moderator() -> None:
    """Scan images with CLIP and other scorers against YAML policies; store tags, flags and decisions."""


def main() -> None:
    app()

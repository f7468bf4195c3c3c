"""`moderator scan`: files, folders and URIs scored in-process."""

from __future__ import annotations

import json
import signal
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderator.types import PolicySkipped

from moderator.cli.common import (
    BatchOpt,
    DatabaseOpt,
    DeviceOpt,
    ModelOpt,
    PolicyOpt,
    PretrainedOpt,
    console,
    fail,
    make_settings,
    open_store,
    out,
)


def scan(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or source URIs to scan.")],
    policy: PolicyOpt = None,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Re-score items even when stored results are current.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Scan images against the policies and store tags, flags and decisions.

    Unchanged items already stored with the current policy versions are skipped.
    Bad files are recorded as errors and the scan goes on; the exit code is non-zero
    only when the scan itself cannot run.
    """
    from moderator import sources
    from moderator.pipeline import Pipeline
    from moderator.policy.load import PolicyError, load_policies
    from moderator.scorers import ScorerUnavailable

    settings = make_settings(
        policies=policy, database_url=database_url, model=model, pretrained=pretrained, device=device,
        batch_size=batch_size,
    )
    for p in paths:
        try:
            sources.resolve(p)
        except ValueError as exc:
            fail(str(exc))
    try:
        loaded = load_policies(settings.policy_paths())
    except PolicyError as exc:
        fail(f"invalid policy: {exc}")
    if not loaded:
        fail("no policy files found (give --policy FILE or set MODERATOR_POLICIES)")
    store = open_store(settings)
    try:
        pipeline = Pipeline(settings, store, loaded)
    except ScorerUnavailable as exc:
        fail(str(exc))
    for reason, names in not_run_by_reason(pipeline.not_run).items():
        console.print(f"[yellow]not run: {', '.join(names)}:[/yellow] {reason}", highlight=False, soft_wrap=True)
    if not pipeline.policies:
        fail("none of the policies can run here (see above)")
    if pipeline.random_weights:
        console.print("[yellow]warning:[/yellow] CLIP has random weights (pretrained=none): its scores mean nothing.")

    show = not quiet and not as_json and console.is_terminal
    with Progress(
        SpinnerColumn(), TextColumn("scanning"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} img/s"), TimeElapsedColumn(),
        console=console, disable=not show, transient=True,
    ) as bar:
        task = bar.add_task("scan", total=None, rate=0.0)

        def advance(n: int) -> None:
            bar.advance(task, n)
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(task, rate=bar.tasks[0].completed / elapsed)

        previous = signal.getsignal(signal.SIGINT)
        try:
            summary = pipeline.scan_targets(paths, progress=advance)
        except KeyboardInterrupt:
            console.print("interrupted: what was scanned is stored; run the same command again to finish.")
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGINT, previous)
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
    elif not quiet:
        out.print(summary_table(summary))
    decisions = ", ".join(f"{k} {v}" for k, v in sorted(summary.decisions.items())) or "none"
    if not as_json:
        console.print(
            f"scanned {summary.scanned}, unchanged {summary.unchanged}, errors {summary.errors}, "
            f"skipped {summary.skipped}; decisions: {decisions} ({summary.seconds:.1f} s)",
            highlight=False,
        )


def not_run_by_reason(skipped: list[PolicySkipped]) -> dict[str, list[str]]:
    """One line per cause, so five CLIP policies without weights make one line, not five."""
    grouped: dict[str, list[str]] = {}
    for s in skipped:
        grouped.setdefault(s.reason, []).append(s.policy)
    return grouped


def summary_table(summary: object) -> Table:
    from moderator.pipeline import ScanSummary

    assert isinstance(summary, ScanSummary)
    table = Table(title="scan summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    for name in ("scanned", "unchanged", "errors", "skipped"):
        table.add_row(name, str(getattr(summary, name)))
    for decision, n in sorted(summary.decisions.items()):
        table.add_row(f"decision: {decision}", str(n))
    for reason, n in sorted(summary.errors_by_reason.items()):
        table.add_row(f"error: {reason}", str(n))
    return table

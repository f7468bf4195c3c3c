"""`moderator scan`: files, folders and URIs scored in-process."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

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
    warn,
)
from moderator.settings import Settings
from moderator.types import PolicySkipped

if TYPE_CHECKING:
    from moderator.pipeline import Pipeline


def scan(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (recursive) or source URIs to scan.")],
    policy: PolicyOpt = None,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto, fp32, fp16 (CUDA) or int8 (CPU, dynamic quantisation) (env MODERATOR_PRECISION)."),
    ] = None,
    decode_workers: Annotated[
        int | None,
        typer.Option(help="Decode worker processes; 0 picks from the CPU count (env MODERATOR_DECODE_WORKERS)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-score items even when stored results are current.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar and no table; only the one-line summary.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="No progress bar; print the summary as one JSON object on stdout.")
    ] = False,
) -> None:
    """Scan images against the policies and store tags, flags and decisions.

    PATH may be a folder, a file, a zip or tar archive (plain, .gz, .bz2, .xz; members
    are read in-stream, never extracted, and stored as ARCHIVE#member) or a source URI.
    Unchanged items already stored with the current policy versions are skipped, so an
    interrupted scan run again finishes the rest. Ctrl-C stops after the batch in hand
    is stored (exit code 130). Bad files are recorded as errors and the scan goes on;
    the exit code is otherwise non-zero only when the scan itself cannot run.
    """
    show = not quiet and not as_json and console.is_terminal
    stop, started = threading.Event(), threading.Event()
    try:
        with _stop_on_signals(stop, started):
            settings = make_settings(
                policies=policy,
                database_url=database_url,
                model=model,
                pretrained=pretrained,
                device=device,
                batch_size=batch_size,
                precision=precision,
                decode_workers=decode_workers,
            )
            pipeline = _pipeline(paths, settings, quiet=quiet)
            with _progress_bar(show) as (bar, task):
                if show:
                    _count_in_background(paths, settings, lambda n: bar.update(task, total=n))

                def advance(n: int) -> None:
                    bar.advance(task, n)
                    elapsed = bar.tasks[0].elapsed or 1e-9
                    bar.update(task, rate=bar.tasks[0].completed / elapsed)

                started.set()
                summary = pipeline.scan_targets(paths, progress=advance, stop=stop, force=force)
    except KeyboardInterrupt:
        if started.is_set():  # the second Ctrl-C: stop now; stored batches stay stored
            console.print("aborted: what was stored stays stored; run the same command again to finish.")
        else:  # before the first batch: policies and the model were loading
            if as_json:
                from moderator.pipeline import ScanSummary

                out.print_json(json.dumps(ScanSummary(interrupted=True).as_dict()))
            console.print("interrupted before the scan started: nothing was stored; run the same command again.")
        raise typer.Exit(130) from None
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
    if summary.interrupted:
        console.print("interrupted: what was scanned is stored; run the same command again to finish.")
        raise typer.Exit(130)


def _pipeline(paths: list[str], settings: Settings, *, quiet: bool) -> Pipeline:
    """Sources, policies, store and model checked and loaded, with one-line errors."""
    from moderator import sources
    from moderator.errors import ScorerUnavailable
    from moderator.pipeline import Pipeline
    from moderator.policy.load import PolicyError, load_policies

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
    store = open_store(settings, create=True, announce=not quiet)
    try:
        pipeline = Pipeline(settings, store, loaded)
    except ScorerUnavailable as exc:
        fail(str(exc))
    for reason, names in not_run_by_reason(pipeline.not_run).items():
        warn(reason, label=f"not run: {', '.join(names)}")
    if not pipeline.policies:
        fail("none of the policies can run here (see above)")
    if pipeline.random_weights:
        warn("CLIP has random weights (pretrained=none): its scores mean nothing.")
    return pipeline


@contextmanager
def _progress_bar(show: bool) -> Iterator[tuple[Progress, TaskID]]:
    with Progress(
        SpinnerColumn(),
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} img/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
        transient=True,
    ) as bar:
        yield bar, bar.add_task("scan", total=None, rate=0.0)


@contextmanager
def _stop_on_signals(stop: threading.Event, started: threading.Event) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) once: finish and store the batch in hand, then stop. Twice, or before the
    scan has started (nothing in hand): stop now."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set() or not started.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print("stopping after the current batch (Ctrl-C again to abort)...")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def count_targets(paths: list[str], settings: Settings) -> int | None:
    """Items the scan will see, where every source can count cheaply (folders, zip, plain tar); else None."""
    from moderator import sources

    return sources.count_targets(paths, settings)


def _count_in_background(paths: list[str], settings: Settings, done: Callable[[int], None]) -> None:
    """The bar starts at once; its total (and so the ETA) appears when the count is in."""

    def run() -> None:
        try:
            n = count_targets(paths, settings)
        except Exception:  # a total is a nicety: the scan reports real problems itself
            return
        if n is not None:
            done(n)

    threading.Thread(target=run, name="moderator-count", daemon=True).start()


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

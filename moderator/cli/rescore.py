"""`moderator rescore`: apply policies to every stored item from stored embeddings."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from moderator.cli.common import (
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
from moderator.cli.compiling import compile_loaded


def rescore(
    policy: PolicyOpt = None,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per policy.")] = False,
) -> None:
    """Re-score every stored item with the policies and store their results under the new versions.

    Uses stored embeddings only (no image is read, no image model runs), so it takes
    seconds after a policy edit. Policies whose scorer reads images or bytes (open_nsfw,
    hash lists) cannot be re-scored this way: scan again for those.

    Works through the items in chunks, each committed with its results, decisions and a
    checkpoint: a rescore that was stopped (killed, failed) goes on, when run again with
    the same policy version and model, after the last chunk it committed. Once a version's
    rescore has finished, running it again re-scores every item from the start.
    """
    from moderator.decide import second_opinion_rules
    from moderator.engine.rescore import check_rescorable, rescore_many
    from moderator.models import model_id_for
    from moderator.policy.load import PolicyError, load_policies

    settings = make_settings(
        policies=policy, database_url=database_url, model=model, pretrained=pretrained, device=device
    )
    try:
        loaded = load_policies(settings.policy_paths())
    except PolicyError as exc:
        fail(f"invalid policy: {exc}")
    if not loaded:
        fail("no policy files found (give --policy FILE)")
    compiled = [compile_loaded(p, settings, stored_embeddings=True) for p in loaded]
    rules = second_opinion_rules(p.loaded.spec for p in compiled)
    # A policy another one needs for a second opinion goes first, so it is judged on new results.
    needed = {r.needs[0] for r in rules}
    compiled.sort(key=lambda p: p.name not in needed)
    store = open_store(settings, announce=True)
    model_id = model_id_for(settings)
    failed = False
    runnable = []
    for p in compiled:
        try:
            check_rescorable(p)
            runnable.append(p)
        except ValueError as exc:
            console.print(f"{p.name}: {exc}", style="red")
            failed = True
    try:
        # One pass over the store for every policy; each chunk commits all their results and checkpoints.
        started = time.perf_counter()
        summaries = rescore_many(store, runnable, model_id, rules=rules) if runnable else []
    except ValueError as exc:  # a scorer's answer was refused; rerunning goes on from the checkpoints
        fail(f"rescore stopped: {exc}", code=1)
    for p, summary in zip(runnable, summaries, strict=True):
        if summary.resumed_after:
            console.print(f"{p.name}: went on after item {summary.resumed_after} (an earlier run stopped there)")
        if as_json:
            out.print_json(json.dumps(summary.as_dict()))
            continue
        actions = ", ".join(f"{k} {v}" for k, v in sorted(summary.actions.items()))
        out.print(f"{summary.policy} {summary.version}: {summary.items} items re-scored ({actions})", highlight=False)
        if summary.missing:
            console.print(
                f"{summary.missing} scored items have no stored embedding of {model_id}: not re-scored "
                "(scan them, or give the --model/--pretrained they were scanned with)",
                style="yellow",
            )
    if summaries and not as_json:
        # The policies share each chunk's transaction and decision refresh: the one whose run
        # started earliest was written in every chunk, so its count is the run's.
        changed = max(s.decisions_changed for s in summaries)
        out.print(f"{changed} item decisions changed; {time.perf_counter() - started:.2f} s", highlight=False)
    if failed:
        raise typer.Exit(1)

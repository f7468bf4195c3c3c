"""`moderator rescore`: apply policies to every stored item from stored embeddings."""

from __future__ import annotations

import json
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
    """
    from moderator.decide import second_opinion_rules
    from moderator.engine.rescore import rescore as run
    from moderator.models import model_id_for
    from moderator.policy.load import PolicyError, load_policies
    from moderator.store.bulk import load_embedding_matrix

    settings = make_settings(
        policies=policy, database_url=database_url, model=model, pretrained=pretrained, device=device
    )
    try:
        loaded = load_policies(settings.policy_paths())
    except PolicyError as exc:
        fail(f"invalid policy: {exc}")
    if not loaded:
        fail("no policy files found (give --policy FILE)")
    compiled = [compile_loaded(p, settings) for p in loaded]
    rules = second_opinion_rules(p.loaded.spec for p in compiled)
    # A policy another one needs for a second opinion goes first, so it is judged on new results.
    needed = {r.needs[0] for r in rules}
    compiled.sort(key=lambda p: p.name not in needed)
    store = open_store(settings, announce=True)
    model_id = model_id_for(settings)
    matrix = load_embedding_matrix(store, model_id)  # loaded once for every policy
    failed = False
    for p in compiled:
        try:
            summary = run(store, p, model_id, matrix=matrix, rules=rules)
        except ValueError as exc:
            console.print(f"{p.name}: {exc}", style="red")
            failed = True
            continue
        if as_json:
            out.print_json(json.dumps(summary.as_dict()))
            continue
        actions = ", ".join(f"{k} {v}" for k, v in sorted(summary.actions.items()))
        out.print(
            f"{summary.policy} {summary.version}: {summary.items} items re-scored ({actions}); "
            f"{summary.decisions_changed} decisions changed; {sum(summary.seconds.values()):.2f} s",
            highlight=False,
        )
        if summary.missing:
            console.print(
                f"{summary.missing} scored items have no stored embedding of {model_id}: not re-scored "
                "(scan them, or give the --model/--pretrained they were scanned with)",
                style="yellow",
            )
    if failed:
        raise typer.Exit(1)

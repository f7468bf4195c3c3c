"""`moderator policy diff OLD NEW` and `moderator policy test FILE IMAGE...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moderator.cli.common import (
    DatabaseOpt,
    DeviceOpt,
    ModelOpt,
    PretrainedOpt,
    console,
    fail,
    make_settings,
    open_store,
    out,
)
from moderator.cli.compiling import compile_file, warn_random_weights

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def diff(
    old: Annotated[Path, typer.Argument(help="The policy file as deployed.")],
    new: Annotated[Path, typer.Argument(help="The edited policy file.")],
    sample: Annotated[int, typer.Option("--sample", min=0, help="Changed items to show.")] = 10,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What NEW would change over every stored item, compared with OLD: decisions, tags, classes.

    Reads stored embeddings only: no image is read and no image model runs (prompt
    embeddings come from the text cache). Nothing is written.
    """
    from moderator.engine.diff import diff_policies
    from moderator.models import model_id_for

    settings = make_settings(database_url=database_url, model=model, pretrained=pretrained, device=device)
    old_policy = compile_file(old, settings, stored_embeddings=True)
    new_policy = compile_file(new, settings, stored_embeddings=True)
    store = open_store(settings)
    try:
        result = diff_policies(store, old_policy, new_policy, model_id_for(settings), sample=sample)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
        return
    out.print(
        f"policy {result.policy_new}: {result.version_old} -> {result.version_new} over {result.items} stored items "
        f"(model {result.model_id})"
    )
    if result.missing:
        console.print(f"{result.missing} scored items have no stored embedding of this model: left out", style="yellow")
    out.print(f"decisions that would change: {result.decisions_changed}", highlight=False)
    for move, n in sorted(result.decision_moves.items(), key=lambda kv: -kv[1]):
        out.print(f"  {move}: {n}", highlight=False)
    out.print(
        f"this policy's action changes on {result.actions_changed} items; tags change on {result.tags_changed} "
        f"(+{result.tags_added} / -{result.tags_removed})",
        highlight=False,
    )
    table = Table("class", "fired before", "fired after", "newly fired", "no longer", "other action", title="by class")
    for c in result.classes:
        table.add_row(
            c.name, *(str(v) for v in (c.fired_old, c.fired_new, c.newly_fired, c.no_longer_fired, c.action_changed))
        )
    out.print(table)
    if result.sample:
        items = Table(
            "item", "decision", "added", "removed", "scores (before -> after)", title="changed items (sample)"
        )
        for s in result.sample:
            scores = ", ".join(f"{k} {_num(a)} -> {_num(b)}" for k, (a, b) in s.scores.items())
            items.add_row(
                s.uri,
                f"{s.decision_old} -> {s.decision_new}",
                " ".join(s.fired_added),
                " ".join(s.fired_removed),
                scores,
            )
        out.print(items)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def test(
    file: Annotated[Path, typer.Argument(help="A policy file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files to score.")],
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a few images with one policy and print every class's score (for prompt tinkering).

    Nothing is stored. A class marked * fired; the evidence says which prompt matched best.
    """
    from moderator.engine.prepare import items_from_files
    from moderator.engine.verdict import PolicySet

    settings = make_settings(model=model, pretrained=pretrained, device=device)
    policies = PolicySet([compile_file(file, settings)])
    if policies.needs.embeddings:
        warn_random_weights(settings)
    try:
        files = policies.judge_all(items_from_files(images), settings)
    except Exception as exc:  # model unavailable and the like: one line
        fail(f"{type(exc).__name__}: {exc}")
    results = {f.item.uri: f.results[0] for f in files if f.ok and f.results}
    errors = {f.item.uri: f.error or "not scored" for f in files if f.item.uri not in results}
    if as_json:
        payload = [
            {"image": f.item.uri, "error": errors[f.item.uri]}
            if f.item.uri in errors
            else {
                "image": f.item.uri,
                "action": results[f.item.uri].action.value,
                "scores": results[f.item.uri].scores,
                "fired": [fc.name for fc in results[f.item.uri].fired],
            }
            for f in files
        ]
        out.print_json(json.dumps(payload))
        return
    for f in files:
        uri = f.item.uri
        if uri in errors:
            console.print(f"{uri}: {errors[uri]}", style="red")
            continue
        r = results[uri]
        fired = {fc.name: fc for fc in r.fired}
        table = Table("class", "score", "fires at", "action", title=f"{uri}: {r.action.value}", title_justify="left")
        for name, score in sorted(r.scores.items(), key=lambda kv: -kv[1]):
            fc = fired.get(name)
            table.add_row(
                f"{name} *" if fc else name,
                f"{score:.4f}",
                f"{fc.threshold:g}" if fc else "",
                fc.action.value if fc else "",
            )
        out.print(table)
        for fc in r.fired:
            if fc.evidence:
                out.print(f"  {fc.name}: {fc.evidence}", highlight=False, markup=False)
    if not results:
        raise typer.Exit(1)

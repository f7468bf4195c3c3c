"""`moderator eval DATASET --policy FILE`: metrics, confusion matrix, thresholds, PR curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

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
from moderator.cli.compiling import compile_loaded, warn_random_weights

if TYPE_CHECKING:
    from moderator.engine.compile import CompiledPolicy
    from moderator.engine.evaluate import EvalReport
    from moderator.policy.load import LoadedPolicy
    from moderator.settings import Settings


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def eval_(
    dataset: Annotated[Path, typer.Argument(help="A folder with one subfolder per class, or a CSV of path,label.")],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="The policy file to evaluate.")],
    compare_prompts: Annotated[
        Path | None,
        typer.Option("--compare-prompts", help="A YAML file of prompt/template variants to compare side by side."),
    ] = None,
    target_precision: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Suggest thresholds reaching this precision.")
    ] = 0.9,
    target_recall: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Suggest thresholds reaching this recall.")
    ] = 0.9,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for report.json and PR curves (default eval-POLICY).")
    ] = None,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a policy on labelled images: per-class precision, recall, F1, support; the confusion
    matrix; suggested thresholds for a target precision or recall; PR curves (PNG) and a JSON report.

    Labels are class names of the policy, or outputs its scorer scores (open_nsfw: nsfw and sfw). CLIP
    runs only for CLIP policies; their image embeddings are stored and reused by content.
    """
    from moderator.datasets import DatasetError, load_dataset
    from moderator.engine.evaluate import evaluate_results, plot_pr_curves, write_json
    from moderator.engine.prepare import items_from_files
    from moderator.engine.verdict import PolicySet
    from moderator.policy.load import PolicyError, load_policy
    from moderator.policy.variants import load_variants

    settings = make_settings(database_url=database_url, model=model, pretrained=pretrained, device=device)
    try:
        data = load_dataset(dataset)
        base = load_policy(policy)
        variants = [("as written", base)] + (load_variants(compare_prompts, base) if compare_prompts else [])
    except (DatasetError, PolicyError) as exc:
        fail(str(exc))
    compiled = _compile_for_labels(variants, data.labels, settings)
    policies = PolicySet([p for _, p in compiled])
    if policies.needs.embeddings:
        warn_random_weights(settings)
    # image embeddings are stored and reused by content: a store is made when missing
    store = open_store(settings, create=True, announce=True) if policies.needs.embeddings else None
    try:
        files = policies.judge_all(items_from_files(data.paths), settings, store=store)
    except Exception as exc:  # the model cannot be loaded: one line
        fail(f"{type(exc).__name__}: {exc}")
    order = [*policies.byte_policies, *policies.later_policies]  # the order of each item's results
    scored = [(f, label) for f, label in zip(files, data.labels, strict=True) if f.ok and len(f.results) == len(order)]
    bad = [f for f in files if not (f.ok and len(f.results) == len(order))]
    for f in bad[:5]:
        console.print(f"skipped {f.item.uri}: {f.error or 'not scored'}", style="yellow")
    if bad:
        console.print(f"{len(bad)} of {len(files)} images could not be used", style="yellow")
    if not scored:
        fail("no usable image in the dataset")
    labels = [label for _, label in scored]
    folder = out_dir or Path(f"eval-{base.spec.name}")
    reports: dict[str, EvalReport] = {}
    for i, (name, p) in enumerate(compiled):
        at = next(j for j, q in enumerate(order) if q is p)
        reports[name] = evaluate_results(
            p,
            [f.results[at] for f, _ in scored],
            labels,
            target_precision=target_precision,
            target_recall=target_recall,
        )
        png = folder / ("pr_curves.png" if i == 0 else f"pr_curves_{_slug(name)}.png")
        plot_pr_curves(reports[name].curves, png, f"{base.spec.name} ({name}): {len(labels)} images")
    main = reports["as written"]
    _print_report(main)
    if len(reports) > 1:
        _print_comparison(reports)
    payload = {
        "policy": base.spec.name,
        "version": base.version,
        "model_id": compiled[0][1].scorer.model_id,
        "dataset": str(dataset),
        "images": len(files),
        "skipped": [{"path": f.item.uri, "error": f.error or "not scored"} for f in bad],
        "report": main.as_dict(),
        "variants": {name: r.as_dict() for name, r in reports.items() if name != "as written"},
    }
    report_path = write_json(payload, folder / "report.json")
    out.print(f"wrote {report_path} and PR curves in {folder}/", highlight=False)


def _compile_for_labels(
    variants: list[tuple[str, LoadedPolicy]], labels: list[str], settings: Settings
) -> list[tuple[str, CompiledPolicy]]:
    """Each variant compiled; dataset labels that are not classes of the policy are added as classes that
    never fire when its scorer can score them (open_nsfw's `sfw` beside `nsfw`), else refused in one line."""
    from moderator.engine.evaluate import with_label_classes

    base = variants[0][1].spec
    unknown = sorted(set(labels) - set(base.classes))
    refused = f"dataset labels {unknown} are not classes of policy {base.name!r} ({', '.join(base.classes)})"
    try:
        extended = [(name, with_label_classes(p, unknown)) for name, p in variants]
    except ValueError as exc:
        fail(f"{refused}: {exc}")
    return [(name, compile_loaded(p, settings, refused=refused if unknown else None)) for name, p in extended]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _print_report(r: EvalReport) -> None:
    out.print(f"{r.items} images, top-1 accuracy {_fmt(r.accuracy)}, mean AP {_fmt(r.mean_average_precision)}")
    table = Table(
        "class",
        "support",
        "precision",
        "recall",
        "F1",
        "AP",
        "fires at",
        "P@t",
        "R@t",
        f"t for P>={r.target_precision:g}",
        f"t for R>={r.target_recall:g}",
        title="per class (top-1; one-vs-rest)",
    )
    for c in r.per_class:
        table.add_row(
            c.name,
            str(c.support),
            _fmt(c.precision),
            _fmt(c.recall),
            _fmt(c.f1),
            _fmt(c.average_precision),
            _fmt(c.threshold),
            _fmt(c.precision_at_threshold),
            _fmt(c.recall_at_threshold),
            _fmt(c.threshold_for_precision),
            _fmt(c.threshold_for_recall),
        )
    out.print(table)
    cm = Table("true \\ predicted", *r.classes, title="confusion matrix")
    for name, row in zip(r.classes, r.confusion, strict=True):
        cm.add_row(name, *(str(v) for v in row))
    out.print(cm)


def _print_comparison(reports: dict[str, EvalReport]) -> None:
    names = list(reports)
    classes = reports[names[0]].classes
    table = Table("average precision", *names, title="prompt variants side by side (best in bold)")
    rows = [
        (c, [next(x for x in reports[n].per_class if x.name == c).average_precision for n in names]) for c in classes
    ]
    rows.append(("mean AP", [reports[n].mean_average_precision for n in names]))
    rows.append(("top-1 accuracy", [reports[n].accuracy for n in names]))
    for label, values in rows:
        best = max((v for v in values if v is not None), default=None)
        table.add_row(label, *(Text(_fmt(v), style="bold") if v is not None and v == best else _fmt(v) for v in values))
    out.print(table)

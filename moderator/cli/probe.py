"""`moderator probe train`: a linear probe on stored CLIP embeddings, from a dataset or reviews."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

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

if TYPE_CHECKING:
    from moderator.engine.probes import LabelledEmbeddings
    from moderator.settings import Settings
    from moderator.store import Store

app = typer.Typer(help="Linear probes: classifiers trained on CLIP embeddings.", no_args_is_help=True)


@app.command("train")
def train(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write NAME.safetensors and NAME.json.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="A folder with one subfolder per class, or a CSV of path,label.")
    ] = None,
    from_reviews: Annotated[
        Path | None, typer.Option("--from-reviews", help="A policy file: train on reviewer labels of its classes.")
    ] = None,
    test_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of items held out for metrics.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Train a logistic-regression probe; print its held-out metrics; save weights (safetensors) and card (JSON).

    Use it in a policy with `scorer: linear_probe` and `options: {probe: NAME.safetensors}`.
    """
    from moderator.engine.probes import train_probe
    from moderator.models import model_id_for
    from moderator.scorers.linear_probe import save_probe

    if (data is None) == (from_reviews is None):
        fail("give exactly one of --data DATASET or --from-reviews POLICY")
    settings = make_settings(database_url=database_url, model=model, pretrained=pretrained, device=device)
    model_id = model_id_for(settings)
    store = open_store(settings, create=data is not None, announce=data is not None)
    if data is not None:
        labelled, source = _from_dataset(data, settings, store), f"dataset {data}"
    else:
        assert from_reviews is not None
        labelled, source = _from_reviews(from_reviews, store, model_id), f"reviews of {from_reviews}"
    try:
        trained = train_probe(labelled, model_id, test_fraction=test_fraction, seed=seed, source=source)
    except ValueError as exc:
        fail(str(exc))
    untrained = [c for c, ok in zip(trained.card["classes"], trained.card["trained"], strict=True) if not ok]
    if untrained:
        console.print(f"no positive and negative examples of {untrained}: those classes always score 0", style="yellow")
    weights, card = save_probe(out_path, trained.weight, trained.bias, trained.card)
    out.print(f"trained on {trained.card['n_train']} items, held out {trained.card['n_test']} ({model_id})")
    out.print_json(json.dumps(trained.card["metrics"]["held_out"]))
    out.print(f"wrote {weights} and {card}", highlight=False)


def _from_dataset(path: Path, settings: Settings, store: Store) -> LabelledEmbeddings:
    from moderator.datasets import DatasetError, load_dataset
    from moderator.engine.prepare import Needs, Preparer, items_from_files
    from moderator.engine.probes_data import from_dataset

    try:
        dataset = load_dataset(path)
    except DatasetError as exc:
        fail(str(exc))
    try:
        files = Preparer(settings, Needs(embeddings=True), store=store).prepare_all(items_from_files(dataset.paths))
    except Exception as exc:  # the model cannot be loaded: one line
        fail(f"{type(exc).__name__}: {exc}")
    labelled, errors = from_dataset(dataset, files)
    for e in errors[:5]:
        console.print(f"skipped {e}", style="yellow")
    return labelled


def _from_reviews(policy: Path, store: Store, model_id: str) -> LabelledEmbeddings:
    from moderator.engine.probes_data import from_reviews
    from moderator.policy.load import PolicyError, load_policy

    try:
        spec = load_policy(policy).spec
    except PolicyError as exc:
        fail(f"invalid policy: {exc}")
    labelled, missing = from_reviews(store, spec, model_id)
    if missing:
        console.print(f"{missing} reviewed items have no stored embedding of {model_id}: left out", style="yellow")
    return labelled

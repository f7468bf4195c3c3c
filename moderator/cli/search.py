"""`moderator search "text"` / `moderator search --image FILE`: stored items by similarity."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moderator.cli.common import DatabaseOpt, DeviceOpt, ModelOpt, PretrainedOpt, fail, make_settings, open_store, out
from moderator.cli.compiling import warn_random_weights


def search(
    text: Annotated[str | None, typer.Argument(help="What to look for, in words.")] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="An example image: find items that look like it.")
    ] = None,
    k: Annotated[int, typer.Option("--top", "-k", min=1, max=10_000, help="How many results.")] = 20,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    reindex: Annotated[
        bool,
        typer.Option("--reindex", help="Build the approximate search index on disk again from every stored embedding."),
    ] = False,
) -> None:
    """Search stored items by text or by an example image (cosine similarity on their CLIP embeddings: exact for
    small stores, else through the approximate index on disk)."""
    from moderator.engine.prepare import items_from_files
    from moderator.engine.search import SearchIndex, image_query, text_query
    from moderator.errors import ScorerUnavailable
    from moderator.models import model_id_for

    if (text is None) == (image is None) and not (reindex and text is None and image is None):
        fail('give either a text query or --image FILE (e.g. moderator search "a red car"), or --reindex')
    settings = make_settings(database_url=database_url, model=model, pretrained=pretrained, device=device)
    store = open_store(settings)
    index = SearchIndex(store, model_id_for(settings), settings)
    if reindex:
        started = time.perf_counter()
        frames = index.reindex()
        took = time.perf_counter() - started
        out.print(f"search index of {model_id_for(settings)}: {frames} embeddings in {took:.1f} s ({index.ann.folder})")
        if text is None and image is None:
            return
    warn_random_weights(settings)
    try:
        if text is not None:
            query = text_query(settings, text)
        else:
            assert image is not None
            query = image_query(settings, items_from_files([image])[0], store)
        hits = index.search(query, k)
    except (ScorerUnavailable, ValueError) as exc:
        fail(str(exc))
    if as_json:
        for h in hits:
            out.print(
                json.dumps({"sha256": h.sha256, "score": h.score, "uris": h.uris}), highlight=False, soft_wrap=True
            )
        return
    if not hits:
        out.print(f"no stored embeddings of {model_id_for(settings)} to search")
        return
    table = Table("#", "score", "item", "sha256")
    for i, h in enumerate(hits, start=1):
        more = f" (+{len(h.uris) - 1} more)" if len(h.uris) > 1 else ""
        table.add_row(str(i), f"{h.score:.4f}", (h.uris[0] if h.uris else "-") + more, h.sha256[:12])
    out.print(table)

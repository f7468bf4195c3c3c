"""Shared pieces of the webhook tests: a store with real decisions (known embeddings), settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from moderator.actions.deliver import Deliverer
from moderator.engine.rescore import rescore
from moderator.settings import Settings
from moderator.store import Store
from tests.lifecycle import MODEL_ID, axis, compiled, context, seed, write

# dog on axis 1 is blocked, cat on axis 0 tagged.
BLOCKING = """
name: pets
mode: exclusive
templates: ["{}"]
classes:
  cat: {prompts: [axis0], threshold: 0.5, action: tag}
  dog: {prompts: [axis1], threshold: 0.5, action: block}
  other: {prompts: [axis2]}
"""
ITEMS = {"cat1": axis(0), "dog1": axis(1), "other1": axis(2)}


def hook_settings(url: str, **over: object) -> Settings:
    values: dict[str, object] = {
        "database_url": url,
        "webhook_allow_private": True,
        "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_timeout_s": 2.0,
        "deliver_poll_s": 0.05,
        **over,
    }
    return Settings.model_validate(values)


def decide_pets(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str = BLOCKING) -> None:
    """Seed three items (first decisions: allow) and rescore them with `policy` (cat tag, dog block)."""
    seed(store, ITEMS)
    ctx, _ = context(tmp_path, monkeypatch)
    rescore(store, compiled(write(tmp_path / "pets.yaml", policy), ctx), MODEL_ID)


@contextmanager
def delivering(deliverer: Deliverer) -> Iterator[Deliverer]:
    """The deliverer's loop on a thread for the duration of the block."""
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=deliverer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield deliverer
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()

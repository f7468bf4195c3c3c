"""Policy files compiled for one command, with one-line errors (lifecycle commands share this)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from moderator.cli.common import fail

if TYPE_CHECKING:
    from moderator.engine.compile import CompiledPolicy
    from moderator.policy.load import LoadedPolicy
    from moderator.settings import Settings


def compile_loaded(
    loaded: LoadedPolicy, settings: Settings, *, refused: str | None = None, stored_embeddings: bool = False
) -> CompiledPolicy:
    """`refused`: what to say before the scorer's reason when it rejects the policy (default: the located
    error). `stored_embeddings`: the policy only scores stored embeddings (ScorerContext.stored_embeddings)."""
    from moderator.engine.compile import compile_policy
    from moderator.models import load_clip
    from moderator.policy.load import PolicyError
    from moderator.scorers import ScorerContext
    from moderator.types import PolicySkipped

    ctx = ScorerContext(settings=settings, clip=partial(load_clip, settings), stored_embeddings=stored_embeddings)
    try:
        compiled = compile_policy(loaded, ctx)
    except PolicyError as exc:
        fail(f"{refused}: {exc.message}" if refused else f"invalid policy: {exc}")
    if isinstance(compiled, PolicySkipped):
        fail(f"policy {compiled.policy!r} cannot run here: {compiled.reason}")
    return compiled


def compile_file(path: Path, settings: Settings, *, stored_embeddings: bool = False) -> CompiledPolicy:
    from moderator.policy.load import PolicyError, load_policy

    try:
        loaded = load_policy(path)
    except PolicyError as exc:
        fail(f"invalid policy: {exc}")
    return compile_loaded(loaded, settings, stored_embeddings=stored_embeddings)


def warn_random_weights(settings: Settings) -> None:
    from moderator.cli.common import warn

    if settings.pretrained.lower() == "none":
        warn("CLIP has random weights (pretrained=none): its scores mean nothing.")

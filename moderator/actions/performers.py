"""Action performers: the consumers of decision events, and their registry.

A performer is one *kind* of consumer (`webhook`: the registered endpoints; `s3`: acting on
the objects). The deliverer (actions/deliver.py) asks every performer which of its *targets*
want each new event (`targets`), writes one delivery per (kind, target), and later calls
`perform(target, event)` under a lease, with retries, backoff, per-target concurrency and
in-order delivery per item and target. So a performer only says who wants what, and does
one delivery; it never deals with leases or retries.

A performer whose deliveries can take longer than a webhook request may set `lease_s` (the
seconds a claimed delivery stays leased; default 3 x MODERATOR_WEBHOOK_TIMEOUT_S + 2): a lease
that runs out mid-delivery lets another replica start the same delivery.

`perform` must be idempotent on `event.id` (delivery is at least once) and should use
`event.seq` to ignore an event older than one it already acted on for the same item. It
raises `PerformError` (or any exception) to have the delivery retried; `retry=False` marks
it failed at once (left for `moderator webhooks replay`).

Registering a performer: a module listed in BUILTIN (imported when present) or any module
calling `register_performer(kind, factory)` before the deliverer starts (e.g. through
MODERATOR_WORKER_IMPORTS-style imports); `factory(settings, store)` returns the performer,
or None when it is not configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from moderator.actions.events import Event

if TYPE_CHECKING:
    from moderator.settings import Settings
    from moderator.store import Store


class PerformError(Exception):
    """A delivery that did not happen; `status` (an HTTP status) and the message are recorded."""

    def __init__(self, message: str, *, status: int | None = None, retry: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry


class Performer(Protocol):
    kind: str  # at most 32 characters; stored with each delivery

    def refresh(self) -> None:
        """Reload configuration (e.g. the endpoint list); called before each fan-out round."""

    def targets(self, event: Event) -> list[str]:
        """The targets (at most 255 characters each) of this kind that want `event`."""

    def perform(self, target: str, event: Event) -> int | None:
        """Deliver `event` to `target` (idempotent); returns a status code to record, if any."""


PerformerFactory = Callable[["Settings", "Store"], "Performer | None"]

# kind -> "module:factory"; a module that is not installed is skipped.
BUILTIN: dict[str, str] = {
    "webhook": "moderator.actions.webhooks:performer",
    "s3": "moderator.actions.s3:performer",
}
_REGISTERED: dict[str, PerformerFactory] = {}


def register_performer(kind: str, factory: PerformerFactory) -> None:
    _REGISTERED[kind] = factory


def factories() -> dict[str, PerformerFactory]:
    found: dict[str, PerformerFactory] = {}
    for kind, spec in BUILTIN.items():
        module, _, attr = spec.partition(":")
        try:
            found[kind] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return {**found, **_REGISTERED}


def load_performers(settings: Settings, store: Store) -> list[Performer]:
    """Every configured performer (a factory that returns None is not configured)."""
    out = []
    for factory in factories().values():
        performer = factory(settings, store)
        if performer is not None:
            out.append(performer)
    return out

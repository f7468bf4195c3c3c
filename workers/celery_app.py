"""The worker's Celery app: the shared configuration (moderator.queue.config) plus what only workers need.

Producers never import this package: they send moderator.queue.TASK_NAME by name with an
app of their own. `celery -A workers.celery_app worker` works too; `moderator worker` picks
the defaults. Delivery rules: see moderator/queue/config.py and docs/workers.md.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from celery import Celery, signals

from moderator.queue.config import TASK_NAME, celery_config
from moderator.settings import Settings

__all__ = ["GPU_ENV", "TASK_NAME", "app", "make_app"]
log = logging.getLogger("moderator.worker")


def make_app(settings: Settings) -> Celery:
    app = Celery("moderator", include=["workers.tasks"])
    app.conf.update(
        celery_config(settings),
        imports=list(settings.worker_imports),
        worker_hijack_root_logger=True,
    )
    return app


WARM_IMPORTS = ("moderator.pipeline", "moderator.models.clip", "moderator.engine.prepare", "alembic.command")
GPU_ENV = "MODERATOR_WORKER_GPUS"  # set by `moderator worker` on multi-GPU machines: "0,1,..."


@signals.worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """Main worker process, before the pool forks: children record metrics into a shared folder."""
    from moderator import metrics

    metrics.prepare()
    # Imports only (no model, no CUDA): forked pool processes start warm, also after a crash
    # (the CLI imports torch lazily, so a child would otherwise pay for it on every restart).
    for module in WARM_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            log.debug("not preloaded: %s (%s)", module, exc)

    port = metrics.serve(Settings())
    if port:
        log.info("metrics on http://0.0.0.0:%d/metrics", port)


@signals.worker_process_init.connect
def _pin_gpu(**_: Any) -> None:
    """One GPU per pool process, before anything in it touches CUDA."""
    gpus = [g for g in os.environ.get(GPU_ENV, "").split(",") if g]
    if gpus:
        from billiard.process import current_process

        index = getattr(current_process(), "index", 0) or 0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


# The worker's app: `celery -A workers.celery_app worker` and `moderator worker` use this one.
app = make_app(Settings())

import workers.repair  # noqa: E402, F401  (its signals start the repair loop in the consuming process)

"""The Celery app, configured from the same settings as the rest of moderator (MODERATOR_*).

Delivery guarantees (see docs/workers.md): acks_late + reject_on_worker_lost + prefetch 1, so a
batch is acknowledged only once its results are stored; a SIGKILLed worker's batch goes back to
the queue after `visibility_timeout`, and the task time limits sit below it so a slow batch is
never handed out twice while it still runs. Job progress lives in the database, not in a result
backend. `celery -A workers.celery_app worker` works too; `moderator worker` picks the defaults.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from celery import Celery, signals

from moderator.settings import Settings

TASK_NAME = "moderator.scan_batch"
log = logging.getLogger("moderator.worker")


def time_limits(settings: Settings) -> tuple[int, int]:
    """(soft, hard) seconds: both below the visibility timeout."""
    vt = settings.visibility_timeout
    return int(vt * 0.8), int(vt * 0.9)


def retry_countdown(settings: Settings, retries: int) -> float:
    """Exponential backoff (1, 2, 4 ... s) capped at a quarter of the visibility timeout.

    A retry waits inside the worker unacknowledged, so it must come due well before Redis
    would hand the message to another worker.
    """
    return float(min(2**retries, max(1, settings.visibility_timeout // 4)))


def config(settings: Settings) -> dict[str, Any]:
    soft, hard = time_limits(settings)
    vt = settings.visibility_timeout
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": vt,
            # Sweep for abandoned (unacked, past the timeout) messages every few seconds.
            "unacked_restore_interval": max(1, min(10, vt // 5)),
            "unacked_restore_throttle": 1,
        },
        "task_default_queue": settings.queue_name,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": True,
        "worker_send_task_events": False,
        "imports": list(settings.worker_imports),
    }


def make_app(settings: Settings) -> Celery:
    app = Celery("moderator", include=["workers.tasks"])
    app.conf.update(config(settings))
    return app


_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


def app_for(settings: Settings) -> Celery:
    """An app for publishing with these settings (one per distinct configuration, reused)."""
    key = json.dumps(config(settings), sort_keys=True)
    with _apps_lock:
        if key not in _apps:
            _apps[key] = make_app(settings)
        return _apps[key]


GPU_ENV = "MODERATOR_WORKER_GPUS"  # set by `moderator worker` on multi-GPU machines: "0,1,..."


@signals.worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """Main worker process, before the pool forks: children record metrics into a shared folder."""
    from moderator import metrics

    metrics.prepare()
    # Imports only (no model, no CUDA): forked pool processes start warm, also after a crash.
    import moderator.pipeline  # noqa: F401

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

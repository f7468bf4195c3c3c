"""The Celery configuration both sides read: producers send by TASK_NAME with it, workers/ runs with it.

Delivery guarantees (see docs/workers.md): acks_late + reject_on_worker_lost + prefetch 1, so a
batch is acknowledged only once its results are stored; a SIGKILLed worker's batch goes back to
the queue after `visibility_timeout`, and the task time limits sit below it so a slow batch is
never handed out twice while it still runs. Job progress lives in the database (the batch
ledger, store.batches), not in a result backend.

Celery itself is imported only when a producer app is made: importing this module is cheap.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from moderator.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

TASK_NAME = "moderator.scan_batch"


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


def celery_config(settings: Settings) -> dict[str, Any]:
    """Broker, transport options and delivery rules, the same for producers and workers."""
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
        "worker_send_task_events": False,
    }


_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()


def producer_app(settings: Settings) -> Celery:
    """A Celery app that only publishes (tasks by name; no worker code imported), one per configuration."""
    config = celery_config(settings)
    key = json.dumps(config, sort_keys=True)
    with _apps_lock:
        if key not in _apps:
            from celery import Celery

            app = Celery("moderator-producer")
            app.conf.update(config)
            _apps[key] = app
        return _apps[key]

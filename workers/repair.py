"""The repair loop of a worker: every MODERATOR_QUEUE_REPAIR_INTERVAL seconds, batches the broker lost
are sent again (moderator.queue.repair), so a job finishes after any broker outage without a person.

It runs as a thread in the worker's main process (the one that consumes; pool children never run
it), started once the worker is ready and stopped with it. Its store is its own and holds no
connection between checks, so a pool child forked meanwhile inherits nothing in use.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, signals

from moderator.settings import Settings

log = logging.getLogger("moderator.worker")
_stop = threading.Event()
_thread: threading.Thread | None = None


def queues_of(consumer: Any, default: str) -> list[str]:
    """The queues a worker consumes (its --queues), read from its running consumer."""
    try:
        names = [q.name for q in consumer.task_consumer.queues]
    except AttributeError:
        names = []
    return names or [default]


def run(settings: Settings, app: Celery, queues: list[str], stop: threading.Event) -> None:
    from moderator.queue.repair import Repairer
    from moderator.store import Store

    repairer = Repairer(settings, app, queues)
    store: Store | None = None
    failing = False
    while not stop.wait(settings.queue_repair_interval):
        try:
            store = store or Store(settings.database_url)
            resent = repairer.check(store)
            if resent:
                log.warning("repair: sent %d lost batch(es) again", len(resent))
            if failing:
                log.info("repair: checking again")
            failing = False
        except Exception as exc:  # the broker or the database is down: the next check tries again
            if not failing:
                log.warning("repair: check failed (%s: %s); trying again", type(exc).__name__, exc)
            failing = True
        finally:
            if store is not None:
                store.engine.dispose()  # no connection held between checks


@signals.worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    global _thread
    settings = Settings()
    if not settings.queue_repair_interval or _thread is not None:
        return
    app = sender.app  # the consumer's own Celery app (importing workers.celery_app here would be a cycle)
    queues = queues_of(sender, settings.queue_name)
    _stop.clear()
    _thread = threading.Thread(target=run, args=(settings, app, queues, _stop), name="moderator-repair", daemon=True)
    _thread.start()
    log.info(
        "repair: checking queues %s for lost batches every %d s", ", ".join(queues), settings.queue_repair_interval
    )


@signals.worker_shutdown.connect
def _stop_thread(**_: Any) -> None:
    _stop.set()

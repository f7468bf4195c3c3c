"""The producer side on a real Redis, no worker: tasks go out by name, and lost ones are found and sent again."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from moderator.queue import TASK_NAME, enqueue_targets, producer_app
from moderator.queue.repair import Repairer, broker_task_ids
from moderator.store import JobBatches, Store
from tests.workers.conftest import REPO, make_settings, write_images

pytestmark = [pytest.mark.redis]


def test_producers_never_import_worker_code(redis_url: str, tmp_path: Path) -> None:
    folder = write_images(tmp_path / "photos", 2)[0].parent
    db = f"sqlite:///{tmp_path / 'store.db'}"
    code = (
        "import sys\n"
        "from moderator.settings import Settings\n"
        "from moderator.queue import enqueue_targets\n"
        "import moderator.s3events.sqs, moderator.s3events.handler\n"
        f"s = Settings(database_url={db!r}, broker_url={redis_url!r})\n"
        f"enqueue_targets([{str(folder)!r}], s)\n"
        "bad = sorted(m for m in sys.modules if m == 'workers' or m.startswith('workers.'))\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_a_batch_lost_by_the_broker_is_sent_again_once(redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, redis_url, queue_batch_size=2, queue_repair_interval=1)
    job_id = enqueue_targets([str(write_images(tmp_path / "photos", 6)[0].parent)], settings)
    app = producer_app(settings)
    queued = broker_task_ids(app, [settings.queue_name])
    assert queued == {f"{job_id}:{i}" for i in range(3)}
    client = redis.Redis.from_url(redis_url)
    (raw,) = [m for m in client.lrange(settings.queue_name, 0, -1) if f"{job_id}:1".encode() in m]
    assert TASK_NAME.encode() in raw  # sent by name

    store = Store(settings.database_url)
    repairer = Repairer(settings, app, [settings.queue_name])
    time.sleep(1.2)
    assert repairer.check(store) == []  # every batch is waiting in its queue: nothing is lost
    client.lrem(settings.queue_name, 1, raw)  # the broker loses one message (e.g. a restart)
    assert repairer.check(store) == []  # missing once: maybe in flight between queue and unacked
    assert repairer.check(store) == [f"{job_id}:1"]  # missing twice: sent again
    assert broker_task_ids(app, [settings.queue_name]) == queued
    other = Repairer(settings, app, [settings.queue_name])  # a second worker checking at the same time
    time.sleep(1.2)
    assert other.check(store) == [] and other.check(store) == [] and repairer.check(store) == []
    assert client.llen(settings.queue_name) == 3
    far = datetime.now(UTC) + timedelta(days=1)
    assert len(JobBatches(store).stalled([settings.queue_name], sent_before=far, started_before=far)) == 3
    store.close()

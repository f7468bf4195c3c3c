"""S3 upload -> SQS event -> `listen` -> Redis queue -> a real worker -> stored result.

Real parts throughout: moto's HTTP S3 and SQS, a private redis-server, a `moderator worker`
subprocess, SQLite. test-tiny random weights: flow only, never what a score says.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest

from moderator.s3events.handler import queue_submit
from moderator.s3events.sqs import listen_sqs
from moderator.store import ExportFilters, Store
from moderator.types import ItemStatus
from tests.conftest import jpeg_bytes
from tests.sources.conftest import aws, moto_endpoint  # noqa: F401  (fixtures)
from tests.workers.conftest import make_settings, settings_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def created(bucket: str, key: str, etag: str, sequencer: str) -> str:
    obj = {"key": quote_plus(key), "size": 1, "eTag": etag, "sequencer": sequencer}
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": obj}}
    return json.dumps({"Records": [record]})


def test_uploads_announced_on_sqs_are_scored_by_a_worker(
    aws: str,  # noqa: F811
    tmp_path: Path,
    redis_url: str,
    start_worker: Any,
) -> None:
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    s3.create_bucket(Bucket="uploads")
    queue_url = sqs.create_queue(QueueName="events")["QueueUrl"]
    objects = {"a/cat photo.jpg": jpeg_bytes(1), "b/dog.jpg": jpeg_bytes(2), "c/notes.jpg": b"not an image"}
    for i, (key, data) in enumerate(objects.items()):
        etag = s3.put_object(Bucket="uploads", Key=key, Body=data)["ETag"].strip('"')
        sqs.send_message(QueueUrl=queue_url, MessageBody=created("uploads", key, etag, f"{i + 1:04X}"))
        # S3 delivers at least once: the same event again must not scan twice
        sqs.send_message(QueueUrl=queue_url, MessageBody=created("uploads", key, etag, f"{i + 1:04X}"))

    settings = make_settings(tmp_path, redis_url)
    store = Store(settings.database_url)
    stats = listen_sqs(queue_url, settings, queue_submit(settings), max_messages=6, wait_seconds=1, store=store)
    assert (stats.received, stats.submitted, stats.malformed) == (6, 3, 0)

    aws_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    worker = start_worker(settings_env(settings, **aws_env))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = {r.uri: r for r in store.iter_export(ExportFilters())}
        if len(rows) == 3 and all(job.state == "done" for job in store.list_jobs()):
            break
        assert worker.proc.poll() is None, worker.text()[-3000:]
        time.sleep(0.5)
    else:
        pytest.fail(f"not all scored: {sorted(rows)}\n{worker.text()[-3000:]}")

    assert rows["s3://uploads/a/cat photo.jpg"].status == ItemStatus.OK
    assert rows["s3://uploads/b/dog.jpg"].status == ItemStatus.OK
    assert rows["s3://uploads/b/dog.jpg"].meta["etag"]
    assert rows["s3://uploads/c/notes.jpg"].status == ItemStatus.ERROR
    jobs = store.list_jobs()  # the messages of one poll become one job; duplicates are not in it
    assert sorted(u for job in jobs for u in job.targets) == sorted(f"s3://uploads/{k}" for k in objects)

"""`listen_sqs` end to end: a real HTTP SQS (moto server), a real SQLite store."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
import uuid
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from moderator.cli.listen import listen as listen_command
from moderator.s3events import sqs as listen_module
from moderator.s3events.handler import QueueUnavailable, queue_submit
from moderator.s3events.sqs import listen_sqs
from moderator.settings import Settings
from moderator.store import ItemRecord, Store
from moderator.types import ItemStatus


def record(
    key: str, name: str = "ObjectCreated:Put", sequencer: str | None = "10", bucket: str = "uploads"
) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "size": 10, "eTag": "e"}
    if sequencer is not None:
        obj["sequencer"] = sequencer
    return {"eventName": name, "eventTime": "2024-05-01T12:00:00Z", "s3": {"bucket": {"name": bucket}, "object": obj}}


def body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


class Queue:
    """The job queue as the listener sees it: submit(uris) -> job id. Can be told to fail."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] = []
        self.fail = False

    def __call__(self, uris: list[str]) -> str:
        if self.fail:
            raise ConnectionError("broker down")
        self.jobs.append(list(uris))
        return f"job-{len(self.jobs)}"

    @property
    def uris(self) -> list[str]:
        return [u for job in self.jobs for u in job]


@pytest.fixture
def store(settings: Settings) -> Store:
    return Store(settings.database_url)


def send(sqs: Any, queue_url: str, *bodies: str) -> None:
    for b in bodies:
        sqs.send_message(QueueUrl=queue_url, MessageBody=b)


def left_in_queue(sqs: Any, queue_url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def listen(queue_url: str, settings: Settings, queue: Queue, store: Store, n: int) -> Any:
    return listen_sqs(queue_url, settings, queue, max_messages=n, wait_seconds=1, store=store)


def test_created_events_are_enqueued_and_their_messages_deleted(
    sqs: Any, queue_url: str, settings: Settings, store: Store
) -> None:
    send(
        sqs,
        queue_url,
        body(record("a/1.png", sequencer="01"), record("a/2.png", sequencer="02")),
        body(record("b.png")),
    )
    queue = Queue()
    stats = listen(queue_url, settings, queue, store, 2)
    assert sorted(queue.uris) == ["s3://uploads/a/1.png", "s3://uploads/a/2.png", "s3://uploads/b.png"]
    assert (stats.received, stats.submitted, stats.malformed) == (2, 3, 0)
    assert left_in_queue(sqs, queue_url) == 0


def test_duplicates_are_enqueued_once(sqs: Any, queue_url: str, settings: Settings, store: Store) -> None:
    dup = body(record("cat.png", sequencer="0A"))
    send(sqs, queue_url, dup, dup)
    queue = Queue()
    listen(queue_url, settings, queue, store, 2)
    send(sqs, queue_url, dup)  # redelivered much later
    stats = listen(queue_url, settings, queue, store, 1)
    assert queue.uris == ["s3://uploads/cat.png"]
    assert stats.dropped == 1
    assert left_in_queue(sqs, queue_url) == 0


def test_out_of_order_events_do_not_undo_newer_ones(sqs: Any, queue_url: str, settings: Settings, store: Store) -> None:
    uri = "s3://uploads/k.png"
    store.save_items([ItemRecord(uri=uri, sha256="0" * 64, size=3, fingerprint="etag:e", status=ItemStatus.OK)])
    queue = Queue()
    # The re-upload (sequencer 30) arrives before the older delete (sequencer 20): the delete is stale.
    send(sqs, queue_url, body(record("k.png", sequencer="30")))
    listen(queue_url, settings, queue, store, 1)
    send(sqs, queue_url, body(record("k.png", "ObjectRemoved:Delete", sequencer="20")))
    stats = listen(queue_url, settings, queue, store, 1)
    assert stats.dropped == 1 and stats.deleted == 0
    assert store.known_items([uri])[uri].status is ItemStatus.OK
    # A longer sequencer is a later one ("100" > "30" as hex): this delete is current.
    send(sqs, queue_url, body(record("k.png", "ObjectRemoved:Delete", sequencer="100")))
    stats = listen(queue_url, settings, queue, store, 1)
    assert stats.deleted == 1
    assert store.known_items([uri])[uri].status is ItemStatus.DELETED
    # And the old creation event, delivered late, does not resurrect it.
    send(sqs, queue_url, body(record("k.png", sequencer="30")))
    listen(queue_url, settings, queue, store, 1)
    assert queue.uris == [uri]


def test_a_malformed_message_is_left_for_the_dead_letter_queue(
    sqs: Any, queue_url: str, settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    send(sqs, queue_url, "this is not json", body(record("ok.png")))
    queue = Queue()
    stats = listen(queue_url, settings, queue, store, 2)
    assert queue.uris == ["s3://uploads/ok.png"]
    assert stats.malformed == 1
    assert left_in_queue(sqs, queue_url) == 1  # in flight until its visibility timeout, then redelivered
    assert "not an S3 event" in caplog.text


def test_sns_wrapped_test_event_and_encoded_keys(sqs: Any, queue_url: str, settings: Settings, store: Store) -> None:
    envelope = {"Type": "Notification", "MessageId": "1", "Message": body(record("my+photos/%E7%8C%AB+1.png"))}
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "uploads"}
    send(sqs, queue_url, json.dumps(envelope), json.dumps(test_event))
    queue = Queue()
    stats = listen(queue_url, settings, queue, store, 2)
    assert queue.uris == ["s3://uploads/my photos/猫 1.png"]
    assert stats.received == 2 and stats.malformed == 0
    assert left_in_queue(sqs, queue_url) == 0  # the test event is acknowledged too


def test_messages_stay_queued_when_enqueueing_fails(
    sqs: Any, settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listen_module, "RETRY_PAUSE_S", 0.0)
    queue_url = sqs.create_queue(QueueName=f"short-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "1"})[
        "QueueUrl"
    ]
    send(sqs, queue_url, body(record("late.png", sequencer="05")))
    queue = Queue()
    queue.fail = True
    stats = listen(queue_url, settings, queue, store, 1)
    assert stats.failed_batches == 1 and queue.uris == []
    assert left_in_queue(sqs, queue_url) == 1
    # Redelivered after its visibility timeout, it is enqueued: the failed try left no ordering state.
    queue.fail = False
    time.sleep(1.2)
    listen(queue_url, settings, queue, store, 1)
    assert queue.uris == ["s3://uploads/late.png"]
    assert left_in_queue(sqs, queue_url) == 0


def test_stop_ends_the_loop(sqs: Any, queue_url: str, settings: Settings, store: Store) -> None:
    stop = threading.Event()
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(listen_sqs(queue_url, settings, Queue(), wait_seconds=1, stop=stop, store=store))
    )
    thread.start()
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and result[0].received == 0


def test_queue_submit_says_so_when_the_queue_is_missing(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moderator.queue", None)  # import fails as if not installed
    with pytest.raises(QueueUnavailable, match="job queue is not available"):
        queue_submit(settings)


def test_the_listen_command_enqueues_through_moderator_queue(
    sqs: Any, queue_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], Settings]] = []
    fake_queue = types.ModuleType("moderator.queue")

    def enqueue_targets(targets: list[str], s: Settings, policies: list[str] | None = None) -> str:
        calls.append((targets, s))
        return "job-7"

    fake_queue.enqueue_targets = enqueue_targets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moderator.queue", fake_queue)
    send(sqs, queue_url, body(record("in/new.png")), "garbage")
    app = typer.Typer()
    app.command()(listen_command)
    result = CliRunner().invoke(
        app,
        ["--sqs", queue_url, "--database-url", settings.database_url, "--max-messages", "2", "--wait-seconds", "1"],
    )
    assert result.exit_code == 0, result.output
    assert [targets for targets, _ in calls] == [["s3://uploads/in/new.png"]]
    assert calls[0][1].database_url == settings.database_url
    assert "1 objects enqueued" in result.output and "1 malformed" in result.output

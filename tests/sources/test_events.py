"""Parsing S3 event notifications: AWS, SNS-wrapped, MinIO; test events; malformed bodies."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from moderator.s3events.ordering import newest_per_object
from moderator.s3events.parse import EventKind, MalformedEvent, S3Event, normalise_sequencer, parse_notification


def aws_record(
    key: str, name: str = "ObjectCreated:Put", sequencer: str | None = "0055AED6DCD90281E5", **obj: Any
) -> dict[str, Any]:
    s3_object: dict[str, Any] = {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", **obj}
    if sequencer is not None:
        s3_object["sequencer"] = sequencer
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2024-05-01T12:00:00.000Z",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
            "object": s3_object,
        },
    }


def sns(message: dict[str, Any], kind: str = "Notification") -> dict[str, Any]:
    return {"Type": kind, "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": json.dumps(message)}


def test_aws_created_event_has_every_field() -> None:
    body = json.dumps({"Records": [aws_record("photos/cat.jpg", versionId="v1")]})
    [event] = parse_notification(body)
    assert event == S3Event(
        kind=EventKind.CREATED,
        bucket="uploads",
        key="photos/cat.jpg",
        etag="d41d8cd98f00b204e9800998ecf8427e",
        version_id="v1",
        sequencer=normalise_sequencer("0055AED6DCD90281E5"),
        event_time=datetime(2024, 5, 1, 12, tzinfo=UTC),
        size=1024,
    )
    assert event.uri == "s3://uploads/photos/cat.jpg"


def test_keys_are_url_decoded_with_plus_for_space() -> None:
    # What S3 sends for "my photos/été 1+1.jpg": spaces as +, a literal + as %2B, UTF-8 percent-encoded.
    [event] = parse_notification({"Records": [aws_record("my+photos/%C3%A9t%C3%A9+1%2B1.jpg")]})
    assert event.key == "my photos/été 1+1.jpg"
    assert event.uri == "s3://uploads/my photos/été 1+1.jpg"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ObjectCreated:Put", EventKind.CREATED),
        ("ObjectCreated:CompleteMultipartUpload", EventKind.CREATED),
        ("ObjectCreated:Copy", EventKind.CREATED),
        ("ObjectRemoved:Delete", EventKind.REMOVED),
        ("ObjectRemoved:DeleteMarkerCreated", EventKind.REMOVED),
        ("LifecycleExpiration:Delete", EventKind.REMOVED),
        ("s3:ObjectCreated:Put", EventKind.CREATED),  # MinIO spelling
        ("s3:ObjectRemoved:Delete", EventKind.REMOVED),
    ],
)
def test_event_names_map_to_created_or_removed(name: str, kind: EventKind) -> None:
    [event] = parse_notification({"Records": [aws_record("a.jpg", name=name)]})
    assert event.kind is kind


def test_other_event_types_are_ignored_but_not_malformed() -> None:
    records = [aws_record("a.jpg", name="ObjectRestore:Completed"), aws_record("b.jpg", name="ObjectTagging:Put")]
    assert parse_notification({"Records": records}) == []


def test_sns_envelope_is_unwrapped() -> None:
    [event] = parse_notification(json.dumps(sns({"Records": [aws_record("x/y.png")]})))
    assert (event.bucket, event.key, event.kind) == ("uploads", "x/y.png", EventKind.CREATED)


def test_sns_subscription_confirmation_carries_no_events() -> None:
    assert parse_notification(sns({"whatever": 1}, kind="SubscriptionConfirmation")) == []


@pytest.mark.parametrize("wrap", [False, True], ids=["raw", "sns"])
def test_s3_test_event_is_acknowledged_and_ignored(wrap: bool) -> None:
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2024-05-01T12:00:00.000Z",
        "Bucket": "uploads",
        "RequestId": "R",
        "HostId": "H",
    }
    assert parse_notification(sns(test_event) if wrap else test_event) == []


def test_minio_webhook_body() -> None:
    record = aws_record("inbox%2Fnew+file.png", name="s3:ObjectCreated:Put", sequencer="17A5B8C0D1E2F3A4")
    record["s3"]["object"]["eTag"] = "abc"
    body = {"EventName": "s3:ObjectCreated:Put", "Key": "uploads/inbox/new file.png", "Records": [record]}
    [event] = parse_notification(json.dumps(body).encode())
    assert (event.bucket, event.key, event.etag) == ("uploads", "inbox/new file.png", "abc")
    assert event.sequencer == normalise_sequencer("17A5B8C0D1E2F3A4")


def test_minio_top_level_only_body() -> None:
    [event] = parse_notification({"EventName": "s3:ObjectRemoved:Delete", "Key": "uploads/inbox/a b.png"})
    assert (event.kind, event.bucket, event.key, event.sequencer) == (
        EventKind.REMOVED,
        "uploads",
        "inbox/a b.png",
        None,
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "JSON object"),
        ({"hello": "world"}, "not an S3 event notification"),
        ({"Records": {"a": 1}}, "Records is not a list"),
        ({"Records": ["x"]}, "Records[0] is not an object"),
        ({"Records": [{"s3": {}}]}, "Records[0].eventName"),
        ({"Records": [{"eventName": "ObjectCreated:Put"}]}, "Records[0].s3"),
        (
            {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}, "object": {"key": "k"}}}]},
            "bucket.name",
        ),
        (
            {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}]},
            "object.key",
        ),
        ({"Records": [aws_record("k", sequencer="not-hex")]}, "sequencer"),
        ({"Records": [aws_record("k", size="big")]}, "size"),
        ({"Records": [{**aws_record("k"), "eventTime": "yesterday"}]}, "eventTime"),
        ({"Type": "Notification", "Message": {"Records": []}}, "Message is not a string"),
        ({"Type": "Notification", "Message": "{oops"}, "not JSON"),
        ({"EventName": "s3:ObjectCreated:Put", "Key": "no-slash"}, "bucket/object"),
    ],
)
def test_malformed_bodies_raise_a_specific_error(body: Any, says: str) -> None:
    with pytest.raises(MalformedEvent, match=re.escape(says)):
        parse_notification(body)


def test_sequencers_of_different_lengths_compare_after_left_padding() -> None:
    # As hex numbers 0xFF < 0x100, although "FF" > "100" as plain strings.
    assert normalise_sequencer("FF") < normalise_sequencer("100")
    assert normalise_sequencer("0055aed6dcd90281e5") == normalise_sequencer("55AED6DCD90281E5")


def _event(key: str, seq: str | None, kind: EventKind = EventKind.CREATED) -> S3Event:
    return S3Event(kind=kind, bucket="b", key=key, sequencer=normalise_sequencer(seq) if seq else None)


def test_newest_per_object_keeps_the_highest_sequencer_per_key() -> None:
    events = [
        _event("a", "20"),
        _event("b", "05"),
        _event("a", "10", EventKind.REMOVED),  # older, arrived later
        _event("b", "06", EventKind.REMOVED),
        _event("a", "20"),  # duplicate
    ]
    newest = newest_per_object(events)
    assert [(e.key, e.kind, e.sequencer) for e in newest] == [
        ("a", EventKind.CREATED, normalise_sequencer("20")),
        ("b", EventKind.REMOVED, normalise_sequencer("06")),
    ]


def test_without_sequencers_the_last_event_wins() -> None:
    newest = newest_per_object([_event("a", None), _event("a", None, EventKind.REMOVED)])
    assert [e.kind for e in newest] == [EventKind.REMOVED]

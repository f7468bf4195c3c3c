"""The S3 source against a real HTTP S3 (moto server): listing, identity, reads, retries."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from PIL import Image

from moderator import sources
from moderator.settings import Settings
from moderator.sources.s3 import SourceItemMissing, SourceItemTooLarge, client, parse_uri, source


def png(color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def put(s3: Any, bucket: str, key: str, body: bytes) -> str:
    etag: str = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
    return etag


def count_calls(settings: Settings, event: str) -> list[str]:
    """Records every botocore `event` (e.g. before-send.s3.GetObject: one per HTTP attempt)."""
    seen: list[str] = []
    s3 = client("s3", settings)

    def hook(**kwargs: Any) -> None:
        seen.append(kwargs.get("event_name", event))

    s3.meta.events.register(event, hook)
    return seen


def test_s3_uris_resolve_to_the_s3_source_before_files() -> None:
    assert sources.resolve("s3://bucket/prefix/") is source
    assert source.claims("s3://b/k") and not source.claims("/tmp/s3:/x") and not source.claims("photos/a.jpg")
    assert parse_uri("s3://b/a/b c.jpg") == ("b", "a/b c.jpg")
    assert parse_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="names no bucket"):
        parse_uri("s3:///key")


def test_prefix_listing_finds_nested_keys_only_under_the_prefix(s3: Any, bucket: str, settings: Settings) -> None:
    keys = ["in/a.png", "in/2024/b.png", "in/2024/05/c.png", "in/2024/05/01/d.png", "in-other/e.png", "out/f.png"]
    for key in keys:
        put(s3, bucket, key, png())
    s3.put_object(Bucket=bucket, Key="in/2024/", Body=b"")  # console "folder": not an upload

    found = sorted(item.uri for item in source.iter_items(f"s3://{bucket}/in/", settings))
    assert found == sorted(f"s3://{bucket}/{k}" for k in keys[:4])
    # A bare prefix is literal, as in S3; the whole bucket when there is none.
    assert len(list(source.iter_items(f"s3://{bucket}/in", settings))) == 5
    assert len(list(source.iter_items(f"s3://{bucket}", settings))) == 6


def test_listing_streams_page_by_page(s3: Any, bucket: str, settings: Settings) -> None:
    for i in range(5):
        put(s3, bucket, f"p/{i}.png", b"x")
    lists = count_calls(settings, "before-send.s3.ListObjectsV2")
    items = source.iter_items(f"s3://{bucket}/p/", settings)
    assert isinstance(items, Iterator)
    next(items)
    assert len(lists) == 1  # page size 2: one page fetched for the first item
    assert len(list(items)) == 4
    assert len(lists) == 3


def test_items_carry_etag_identity_and_are_read_lazily(s3: Any, bucket: str, settings: Settings) -> None:
    body = png()
    etag = put(s3, bucket, "x/cat photo é.png", body)
    gets = count_calls(settings, "before-send.s3.GetObject")
    [item] = list(source.iter_items(f"s3://{bucket}/x/", settings))
    assert gets == []  # listing never downloads
    assert item.uri == f"s3://{bucket}/x/cat photo é.png"
    assert item.fingerprint == f"etag:{etag}"
    assert item.size == len(body)
    assert item.meta["bucket"] == bucket and item.meta["key"] == "x/cat photo é.png" and item.meta["etag"] == etag
    assert item.meta["size"] == len(body) and item.meta["last_modified"]
    assert item.read() == body
    assert sources.read_uri(item.uri, settings) == body
    assert len(gets) == 2


def test_an_exact_key_is_that_object_only(s3: Any, bucket: str, settings: Settings) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    etag = put(s3, bucket, "a/1.png", png())
    put(s3, bucket, "a/1.png.bak", png())
    [item] = list(source.iter_items(f"s3://{bucket}/a/1.png", settings))
    assert item.uri == f"s3://{bucket}/a/1.png"
    assert item.fingerprint == f"etag:{etag}"
    assert item.meta["version_id"]


def test_an_overwritten_object_gets_a_new_fingerprint(s3: Any, bucket: str, settings: Settings) -> None:
    put(s3, bucket, "o.png", png("red"))
    [before] = list(source.iter_items(f"s3://{bucket}/", settings))
    [same] = list(source.iter_items(f"s3://{bucket}/", settings))
    put(s3, bucket, "o.png", png("blue"))
    [after] = list(source.iter_items(f"s3://{bucket}/", settings))
    assert before.fingerprint == same.fingerprint != after.fingerprint


def test_empty_and_non_image_objects_are_yielded(s3: Any, bucket: str, settings: Settings) -> None:
    put(s3, bucket, "e/empty.jpg", b"")
    put(s3, bucket, "e/notes.txt", b"not an image")
    items = {i.uri.rsplit("/", 1)[1]: i for i in source.iter_items(f"s3://{bucket}/e/", settings)}
    assert set(items) == {"empty.jpg", "notes.txt"}  # decoding records them as errors
    assert items["empty.jpg"].size == 0 and items["empty.jpg"].read() == b""


def test_an_object_deleted_after_listing_raises_missing_once(s3: Any, bucket: str, settings: Settings) -> None:
    put(s3, bucket, "gone.png", png())
    [item] = list(source.iter_items(f"s3://{bucket}/", settings))
    s3.delete_object(Bucket=bucket, Key="gone.png")
    attempts = count_calls(settings, "before-send.s3.GetObject")
    with pytest.raises(SourceItemMissing, match=f"s3://{bucket}/gone.png no longer exists"):
        item.read()
    assert len(attempts) == 1  # a 404 is not retried


def test_a_missing_bucket_is_missing_too(aws: str, settings: Settings) -> None:
    with pytest.raises(SourceItemMissing):
        source.read("s3://no-such-bucket-here/k.png", settings)


def test_an_object_over_the_size_limit_is_not_read(s3: Any, bucket: str, settings: Settings) -> None:
    put(s3, bucket, "big.png", b"x" * 100)
    small = settings.model_copy(update={"max_image_bytes": 10})
    with pytest.raises(SourceItemTooLarge, match="max_image_bytes=10"):
        source.read(f"s3://{bucket}/big.png", small)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _slow_down_first(times: int, settings: Settings) -> list[int]:
    """The first `times` GetObject attempts get a 503 SlowDown (S3's throttling answer)."""
    attempts: list[int] = []

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        attempts.append(1)
        if len(attempts) > times:
            return None  # go on to the real server
        xml = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(xml))

    client("s3", settings).meta.events.register_first("before-send.s3.GetObject", hook)
    return attempts


def test_throttling_is_retried_with_backoff(s3: Any, bucket: str, settings: Settings) -> None:
    put(s3, bucket, "t.png", b"bytes")
    attempts = _slow_down_first(1, settings)
    assert source.read(f"s3://{bucket}/t.png", settings) == b"bytes"
    assert len(attempts) == 2


def test_retries_stop_at_max_attempts(s3: Any, bucket: str, settings: Settings) -> None:
    put(s3, bucket, "t.png", b"bytes")
    once = settings.model_copy(update={"s3_max_attempts": 1})
    attempts = _slow_down_first(5, once)
    with pytest.raises(ClientError, match="SlowDown"):
        source.read(f"s3://{bucket}/t.png", once)
    assert len(attempts) == 1

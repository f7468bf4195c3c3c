"""The S3 source against a real HTTP S3 (moto server): listing, identity, reads, retries."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from PIL import Image

from moderator import sources
from moderator.errors import SourceError, SourceUnavailable
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
    with pytest.raises(SourceUnavailable, match="SlowDown") as raised:
        source.read(f"s3://{bucket}/t.png", once)
    assert isinstance(raised.value.__cause__, ClientError)  # retry logic still sees S3's answer
    assert len(attempts) == 1


# --- failures: one line naming the target, the cause and the fix ---------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_bucket_that_does_not_exist_is_one_line_with_the_fix(aws: str, settings: Settings) -> None:
    with pytest.raises(SourceError) as raised:
        list(source.iter_items("s3://no-such-bucket-anywhere/x", settings))
    text = one_line(raised.value)
    assert text.startswith("s3://no-such-bucket-anywhere/x: there is no bucket 'no-such-bucket-anywhere' at ")
    assert aws in text and "check the bucket name" in text


def test_missing_credentials_say_how_to_give_them(
    aws: str, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup
    for attempt in (lambda: list(source.iter_items("s3://b/x/", settings)), lambda: source.read("s3://b/k", settings)):
        with pytest.raises(SourceError) as raised:
            attempt()
        text = one_line(raised.value)
        assert "no AWS credentials" in text and "AWS_ACCESS_KEY_ID" in text and "AWS_PROFILE" in text


def test_an_unknown_profile_is_named(aws: str, monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(SourceError, match="no-such-profile") as raised:
        list(source.iter_items("s3://b/x/", settings))
    assert "AWS_PROFILE" in one_line(raised.value)


def test_an_endpoint_that_is_down_may_pass_and_says_what_to_check(
    aws: str, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", down)
    once = settings.model_copy(update={"s3_max_attempts": 1})
    for attempt, doing in (
        (lambda: list(source.iter_items("s3://b/x/", once)), "listing"),
        (lambda: source.read("s3://b/k.png", once), "reading"),
    ):
        with pytest.raises(SourceUnavailable) as raised:
            attempt()
        text = one_line(raised.value)
        assert f"cannot reach the S3 endpoint {down} while {doing}" in text and "AWS_ENDPOINT_URL" in text
        assert isinstance(raised.value, ConnectionError)  # retried by whoever retries connection failures


def moto_checks_credentials_after(endpoint: str, requests_unchecked: str) -> None:
    """moto's server checks credentials after this many more requests ("inf": never, its default)."""
    import requests

    headers = {"Content-Type": "text/plain"}
    requests.post(f"{endpoint}/moto-api/reset-auth", data=requests_unchecked.encode(), headers=headers, timeout=10)


@pytest.fixture
def denied_env(s3: Any, bucket: str, aws: str) -> Iterator[dict[str, str]]:
    """Credentials of an IAM user with no permission; moto checks them from here on, until the test ends."""
    import boto3

    put(s3, bucket, "in/a.png", png())
    moto_checks_credentials_after(aws, "2")  # the two IAM calls below pass unchecked
    try:
        iam = boto3.client("iam")
        iam.create_user(UserName=f"nobody-{bucket}")
        key = iam.create_access_key(UserName=f"nobody-{bucket}")["AccessKey"]
        yield {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        moto_checks_credentials_after(aws, "inf")


def test_access_denied_names_the_permission_needed(
    bucket: str, denied_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    for name, value in denied_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SourceError) as listing:
        list(source.iter_items(f"s3://{bucket}/in/", settings))
    text = one_line(listing.value)
    assert text.startswith(f"s3://{bucket}/in/: access denied while listing it") and "s3:ListBucket" in text
    with pytest.raises(SourceError) as reading:
        source.read(f"s3://{bucket}/in/a.png", settings)
    text = one_line(reading.value)
    assert text.startswith(f"s3://{bucket}/in/a.png: access denied while reading it") and "s3:GetObject" in text
    assert not isinstance(reading.value, SourceUnavailable)  # final: retrying cannot help


def test_wrong_credentials_are_refused_in_one_line(
    bucket: str, aws: str, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    moto_checks_credentials_after(aws, "0")
    try:
        with pytest.raises(SourceError) as raised:
            list(source.iter_items(f"s3://{bucket}/", settings))
    finally:
        moto_checks_credentials_after(aws, "inf")
    text = one_line(raised.value)
    assert "the AWS credentials were refused (InvalidAccessKeyId)" in text and "AWS_SECRET_ACCESS_KEY" in text

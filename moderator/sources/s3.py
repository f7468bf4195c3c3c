"""S3 (and S3-compatible) objects as a source: ``s3://bucket/key`` or ``s3://bucket/prefix``.

Credentials and endpoint come from boto3's standard chain: environment, profile,
instance role, and AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for MinIO, R2 and
friends. Listing streams page by page; bytes are fetched by `read()`, i.e. by
whoever scores the item, not by the lister.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from moderator.settings import Settings
from moderator.types import SourceItem

SCHEME = "s3://"
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket", "NoSuchVersion"}


class SourceItemMissing(Exception):
    """The object is gone (deleted between listing and fetch): recorded as an item error, not retried."""


class SourceItemTooLarge(Exception):
    """The object is larger than max_image_bytes: recorded as an item error without reading it."""


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key-or-prefix`` -> (bucket, key-or-prefix); the key may be empty."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (expected s3://bucket/prefix)")
    return bucket, key


def _is_missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in _MISSING_CODES or status == 404


def client(service: str, settings: Settings) -> Any:
    """A boto3 client with retries on throttling and 5xx; cached per configuration (clients are thread-safe)."""
    aws_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _client(service, settings.s3_max_attempts, settings.s3_retry_mode, aws_env)


@functools.lru_cache(maxsize=16)
def _client(service: str, max_attempts: int, retry_mode: str, aws_env: tuple[tuple[str, str], ...]) -> Any:
    # aws_env is only part of the cache key: boto3 reads the environment itself.
    # total_max_attempts counts the first try (retries.max_attempts would not).
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": retry_mode}, connect_timeout=10, read_timeout=60
    )
    return boto3.session.Session().client(service, config=config)  # type: ignore[call-overload]


class S3Source:
    name = "s3"
    priority = 100  # above files: an s3:// target is never a local path

    def claims(self, target: str) -> bool:
        return target.startswith(SCHEME)

    def iter_items(self, target: str, settings: Settings) -> Iterator[SourceItem]:
        """The object named by `target` if it exists, else every object under it as a prefix.

        The prefix is taken literally, as S3 does: ``s3://b/photos`` also matches
        ``photos-old/``; end it with ``/`` to mean the folder.
        """
        bucket, key = parse_uri(target)
        s3 = client("s3", settings)
        if key and not key.endswith("/"):
            head = self._head(s3, bucket, key)
            if head is not None:
                yield self._item(
                    bucket,
                    key,
                    head["ETag"],
                    head["ContentLength"],
                    head["LastModified"],
                    settings,
                    head.get("VersionId"),
                )
                return
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key, PaginationConfig={"PageSize": settings.s3_page_size}
        )
        for page in pages:
            for obj in page.get("Contents", ()):
                if obj["Key"].endswith("/") and obj["Size"] == 0:
                    continue  # a "folder" placeholder made by consoles, not an upload
                yield self._item(bucket, obj["Key"], obj["ETag"], obj["Size"], obj["LastModified"], settings)

    def read(self, uri: str, settings: Settings) -> bytes:
        bucket, key = parse_uri(uri)
        try:
            response = client("s3", settings).get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                raise SourceItemMissing(f"{uri} no longer exists (deleted after it was listed)") from None
            raise
        body = response["Body"]
        try:
            if response["ContentLength"] > settings.max_image_bytes:
                raise SourceItemTooLarge(
                    f"{uri} is {response['ContentLength']} bytes, over max_image_bytes={settings.max_image_bytes}"
                )
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def _head(self, s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return head

    def _item(
        self,
        bucket: str,
        key: str,
        etag: str,
        size: int,
        modified: Any,
        settings: Settings,
        version_id: str | None = None,
    ) -> SourceItem:
        uri = f"{SCHEME}{bucket}/{key}"
        etag = etag.strip('"')
        return SourceItem(
            uri=uri,
            read=functools.partial(self.read, uri, settings),
            size=size,
            # The ETag alone: a listing carries no VersionId, and an object re-uploaded with
            # the same bytes (new version, same ETag) needs no rescan.
            fingerprint=f"etag:{etag}",
            meta={
                "bucket": bucket,
                "key": key,
                "etag": etag,
                "version_id": version_id,
                "size": size,
                "last_modified": modified.isoformat() if hasattr(modified, "isoformat") else str(modified),
            },
        )


source = S3Source()

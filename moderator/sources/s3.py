"""S3 (and S3-compatible) objects as a source: ``s3://bucket/key`` or ``s3://bucket/prefix``.

Credentials and endpoint come from boto3's standard chain: environment, profile,
instance role, and AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for MinIO, R2 and
friends. Listing streams page by page; bytes are fetched by `read()`, i.e. by
whoever scores the item, not by the lister. Every failure to list or read (no bucket,
access denied, no credentials, endpoint down) is a SourceError with a one-line message
that names the fix; boto3 is imported on first use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from moderator.errors import SourceError, SourceUnavailable
from moderator.settings import Settings
from moderator.types import SourceItem

SCHEME = "s3://"
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket", "NoSuchVersion"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_REFUSED_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
}
_TRY_AGAIN_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling", "429"}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "301", "IllegalLocationConstraintException"}


class SourceItemMissing(SourceError):
    """The object is gone (deleted between listing and fetch): recorded as an item error, not retried."""


class SourceItemTooLarge(SourceError):
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


def explain(exc: Exception, uri: str, doing: str, endpoint: str | None = None) -> SourceError:
    """One line for a failed S3 request: the URI, what failed and what to do about it."""
    where = endpoint or "AWS S3 (set AWS_ENDPOINT_URL for MinIO and other S3-compatible stores)"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        fix = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an instance role applies"
        return SourceError(f"{uri}: no AWS credentials ({_first_line(exc)}): {fix}")
    if isinstance(exc, ProfileNotFound):
        return SourceError(f"{uri}: {_first_line(exc)}: fix AWS_PROFILE or add the profile to ~/.aws/config")
    if isinstance(exc, NoRegionError):
        return SourceError(f"{uri}: no AWS region: set AWS_DEFAULT_REGION (e.g. us-east-1)")
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        fix = "check AWS_ENDPOINT_URL and that the endpoint is up and reachable"
        return SourceUnavailable(
            f"{uri}: cannot reach the S3 endpoint {where} while {doing} ({_first_line(exc)}): {fix}"
        )
    if isinstance(exc, ParamValidationError):
        return SourceError(f"{uri}: not a valid S3 request: {' '.join(str(exc).split())}")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(error.get("Code") or status or "?")
        bucket = parse_uri(uri)[0]
        message = " ".join(str(error.get("Message") or exc).split())
        if code in _TRY_AGAIN_CODES or status >= 500:
            return SourceUnavailable(
                f"{uri}: S3 is unavailable for now while {doing} ({code}: {message}): try again later, "
                "or raise MODERATOR_S3_MAX_ATTEMPTS"
            )
        if code == "NoSuchBucket":
            return SourceError(
                f"{uri}: there is no bucket {bucket!r} at {where}: check the bucket name (and AWS_ENDPOINT_URL)"
            )
        if code in _DENIED_CODES:
            listing = doing.startswith("listing")
            need = "s3:ListBucket on the bucket (and s3:GetObject)" if listing else "s3:GetObject on the object"
            return SourceError(
                f"{uri}: access denied while {doing}: the AWS credentials in use need {need}; "
                "grant it, or use other credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID)"
            )
        if code in _REFUSED_CREDENTIALS:
            return SourceError(
                f"{uri}: the AWS credentials were refused ({code}): check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or renew an expired session token"
            )
        if code in _WRONG_REGION:
            return SourceError(f"{uri}: the bucket {bucket!r} is in another region: set AWS_DEFAULT_REGION to it")
        return SourceError(f"{uri}: S3 refused {doing}: {code}: {message}")
    if isinstance(exc, BotoCoreError):
        return SourceError(f"{uri}: S3 failed while {doing}: {type(exc).__name__}: {_first_line(exc)}")
    raise TypeError(f"not an S3 error: {exc!r}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def client(service: str, settings: Settings) -> Any:
    """A boto3 client with retries on throttling and 5xx; cached per configuration (clients are thread-safe)."""
    aws_env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _client(service, settings.s3_max_attempts, settings.s3_retry_mode, aws_env)


@functools.lru_cache(maxsize=16)
def _client(service: str, max_attempts: int, retry_mode: str, aws_env: tuple[tuple[str, str], ...]) -> Any:
    # aws_env is only part of the cache key: boto3 reads the environment itself.
    # total_max_attempts counts the first try (retries.max_attempts would not).
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": retry_mode}, connect_timeout=10, read_timeout=60
    )
    return boto3.session.Session().client(service, config=config)  # type: ignore[call-overload]


class S3Source:
    name = "s3"
    priority = 100  # above files: an s3:// target is never a local path

    def claims(self, target: str) -> bool:
        return target.startswith(SCHEME)

    def count(self, target: str, settings: Settings) -> int | None:
        return None  # counting a prefix is listing it: the scan's own listing is the count

    def iter_items(self, target: str, settings: Settings) -> Iterator[SourceItem]:
        """The object named by `target` if it exists, else every object under it as a prefix.

        The prefix is taken literally, as S3 does: ``s3://b/photos`` also matches
        ``photos-old/``; end it with ``/`` to mean the folder.
        """
        bucket, key = parse_uri(target)
        s3 = self._client(target, settings)
        try:
            yield from self._list(s3, bucket, key, settings)
        except (BotoCoreError, ClientError) as exc:
            raise explain(exc, target, "listing it", s3.meta.endpoint_url) from exc

    def _list(self, s3: Any, bucket: str, key: str, settings: Settings) -> Iterator[SourceItem]:
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
        s3 = self._client(uri, settings)
        try:
            return self._read(s3, uri, bucket, key, settings)
        except (BotoCoreError, ClientError) as exc:
            if isinstance(exc, ClientError) and _is_missing(exc):
                raise SourceItemMissing(f"{uri} no longer exists (deleted after it was listed)") from None
            raise explain(exc, uri, "reading it", s3.meta.endpoint_url) from exc

    def _client(self, uri: str, settings: Settings) -> Any:
        try:
            return client("s3", settings)
        except BotoCoreError as exc:  # e.g. an AWS_PROFILE that does not exist
            raise explain(exc, uri, "connecting") from exc

    def _read(self, s3: Any, uri: str, bucket: str, key: str, settings: Settings) -> bytes:
        response = s3.get_object(Bucket=bucket, Key=key)
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

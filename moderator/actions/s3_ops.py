"""The S3 requests behind the actions: find the judged object, merge tags, verified moves.

A move never deletes what it has not copied and verified: CopyObject (metadata and tags
copied, a SHA-256 checksum asked for), then HeadObject of the copy: the same size, the same
ETag when the source's is a plain MD5, and the SHA-256 of the bytes that were scored
(from the copy's full-object checksum, or computed from its bytes when S3 has none). Only
then is the source deleted, by VersionId in a versioned bucket, so a newer upload under the
same key is never touched.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from moderator.sources.s3 import explain

_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_CHUNK = 1 << 20


class S3ActionError(Exception):
    """An S3 action failed (one line: what, on which object, why); the deliverer retries it."""


@dataclass(frozen=True)
class Located:
    """One version of one object, as HeadObject saw it."""

    bucket: str
    key: str
    version_id: str | None  # None (or "null") in a bucket that never had versioning
    etag: str  # without quotes
    size: int
    last_modified: datetime | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def versioned(self) -> bool:
        return self.version_id not in (None, "null")

    def version_args(self) -> dict[str, str]:
        return {"VersionId": self.version_id} if self.versioned and self.version_id else {}

    def describe(self) -> str:
        return f"{self.uri} (version {self.version_id})" if self.versioned else self.uri


def _missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in _MISSING or status == 404


_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}


def failure(s3: Any, exc: BotoCoreError | ClientError, uri: str, doing: str, need: str) -> S3ActionError:
    """One line for a failed request: the object, what was being done, why, and the fix."""
    if isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in _DENIED:
        return S3ActionError(f"{uri}: access denied while {doing}: grant {need} to the AWS credentials in use")
    message = str(explain(exc, uri, doing, s3.meta.endpoint_url))
    return S3ActionError(message if doing in message else f"{message} (while {doing})")


def head(s3: Any, bucket: str, key: str, version_id: str | None = None) -> dict[str, Any] | None:
    """HeadObject (with checksums), None when the object or version does not exist."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
    if version_id not in (None, "null"):
        args["VersionId"] = version_id
    try:
        response: dict[str, Any] = s3.head_object(**args)
    except ClientError as exc:
        if _missing(exc):
            return None
        raise failure(s3, exc, f"s3://{bucket}/{key}", "reading its metadata (HeadObject)", "s3:GetObject") from exc
    except BotoCoreError as exc:
        raise failure(s3, exc, f"s3://{bucket}/{key}", "reading its metadata (HeadObject)", "s3:GetObject") from exc
    return response


def _located(bucket: str, key: str, response: dict[str, Any]) -> Located:
    return Located(
        bucket,
        key,
        response.get("VersionId"),
        str(response["ETag"]).strip('"'),
        int(response["ContentLength"]),
        response.get("LastModified"),
    )


def locate(s3: Any, bucket: str, key: str, *, etag: str | None, version_id: str | None) -> Located | None:
    """The version that was judged: by VersionId when known, else the current object when its
    ETag is the judged one, else (versioned bucket, newer upload on top) the newest version
    with that ETag. None: gone, or only other content is there.
    """
    if version_id not in (None, "null"):
        response = head(s3, bucket, key, version_id)
        return _located(bucket, key, response) if response else None
    response = head(s3, bucket, key)
    if response is not None and (etag is None or str(response["ETag"]).strip('"') == etag):
        return _located(bucket, key, response)
    if etag is None:
        return None
    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key)
        matches = [
            v
            for page in pages
            for v in page.get("Versions", ())
            if v["Key"] == key and str(v["ETag"]).strip('"') == etag and v.get("VersionId") not in (None, "null")
        ]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"AccessDenied", "403"}:
            return None  # no s3:ListBucketVersions: the changed object is simply not acted upon
        raise failure(s3, exc, f"s3://{bucket}/{key}", "listing its versions", "s3:ListBucketVersions") from exc
    except BotoCoreError as exc:
        raise failure(s3, exc, f"s3://{bucket}/{key}", "listing its versions", "s3:ListBucketVersions") from exc
    if not matches:
        return None
    newest = max(matches, key=lambda v: v["LastModified"])
    response = head(s3, bucket, key, newest["VersionId"])
    return _located(bucket, key, response) if response else None


def get_tags(s3: Any, loc: Located) -> dict[str, str]:
    try:
        response = s3.get_object_tagging(Bucket=loc.bucket, Key=loc.key, **loc.version_args())
    except (BotoCoreError, ClientError) as exc:
        raise failure(s3, exc, loc.uri, "reading its tags (GetObjectTagging)", "s3:GetObjectTagging") from exc
    return {t["Key"]: t["Value"] for t in response.get("TagSet", ())}


def put_tags(s3: Any, loc: Located, tags: dict[str, str]) -> None:
    tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
    try:
        if tag_set:
            s3.put_object_tagging(Bucket=loc.bucket, Key=loc.key, Tagging={"TagSet": tag_set}, **loc.version_args())
        else:
            s3.delete_object_tagging(Bucket=loc.bucket, Key=loc.key, **loc.version_args())
    except (BotoCoreError, ClientError) as exc:
        raise failure(
            s3, exc, loc.uri, "writing its tags (PutObjectTagging)", "s3:PutObjectTagging (s3:PutObjectVersionTagging)"
        ) from exc


def _sha256_of(s3: Any, loc: Located) -> str:
    try:
        body = s3.get_object(Bucket=loc.bucket, Key=loc.key, **loc.version_args())["Body"]
        digest = hashlib.sha256()
        try:
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                digest.update(chunk)
        finally:
            body.close()
    except (BotoCoreError, ClientError) as exc:
        raise failure(s3, exc, loc.uri, "reading it back to verify it", "s3:GetObject") from exc
    return digest.hexdigest()


def content_sha256(s3: Any, loc: Located, response: dict[str, Any]) -> tuple[str, str]:
    """(sha256 hex, how it was learnt): the full-object checksum S3 keeps, else the bytes hashed."""
    checksum = response.get("ChecksumSHA256")
    # A multipart upload's checksum is of its parts ("...-N", type COMPOSITE): not the object's.
    if checksum and "-" not in checksum and response.get("ChecksumType") != "COMPOSITE":
        return base64.b64decode(checksum).hex(), "checksum"
    return _sha256_of(s3, loc), "computed"


def verify(s3: Any, loc: Located, *, size: int, sha256: str, etag: str | None) -> str | None:
    """None when `loc` holds exactly the expected bytes, else what differs (one line)."""
    response = head(s3, loc.bucket, loc.key, loc.version_id)
    if response is None:
        return f"{loc.describe()} is not there"
    if int(response["ContentLength"]) != size:
        return f"{loc.describe()} is {response['ContentLength']} bytes, expected {size}"
    got_etag = str(response["ETag"]).strip('"')
    if etag is not None and "-" not in etag and "-" not in got_etag and got_etag != etag:
        return f"{loc.describe()} has ETag {got_etag}, expected {etag}"
    digest, how = content_sha256(s3, loc, response)
    if digest != sha256:
        return f"{loc.describe()} has sha256 {digest} ({how}), expected {sha256}"
    return None


def copy(s3: Any, src: Located, bucket: str, key: str) -> Located:
    """CopyObject with its metadata and tags; the new object (version) as HeadObject sees it."""
    source: dict[str, str] = {"Bucket": src.bucket, "Key": src.key, **src.version_args()}
    try:
        response = s3.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource=source,
            CopySourceIfMatch=f'"{src.etag}"',
            MetadataDirective="COPY",
            TaggingDirective="COPY",
            ChecksumAlgorithm="SHA256",
        )
    except (BotoCoreError, ClientError) as exc:
        need = "s3:GetObject and s3:GetObjectTagging on the source, s3:PutObject and s3:PutObjectTagging here"
        raise failure(s3, exc, f"s3://{bucket}/{key}", f"copying {src.describe()} there (CopyObject)", need) from exc
    version = response.get("VersionId")
    found = head(s3, bucket, key, version)
    if found is None:
        raise S3ActionError(f"s3://{bucket}/{key}: the copy of {src.describe()} is not there after CopyObject")
    return _located(bucket, key, {**found, "VersionId": version or found.get("VersionId")})


def delete(s3: Any, loc: Located) -> None:
    """DeleteObject of exactly this version (a versioned bucket), or of the key (unversioned)."""
    try:
        s3.delete_object(Bucket=loc.bucket, Key=loc.key, **loc.version_args())
    except (BotoCoreError, ClientError) as exc:
        raise failure(
            s3, exc, loc.uri, "deleting it (DeleteObject)", "s3:DeleteObject (s3:DeleteObjectVersion)"
        ) from exc


def still_current(s3: Any, loc: Located) -> bool:
    """An unversioned object still holds the ETag it had (just before deleting it)."""
    if loc.versioned:
        return True  # the delete names the version: nothing else can be deleted
    response = head(s3, loc.bucket, loc.key)
    return response is not None and str(response["ETag"]).strip('"') == loc.etag


def move(s3: Any, src: Located, bucket: str, keys: list[str], sha256: str) -> tuple[Located, str]:
    """Copy `src` to the first of `keys` that is free (or already holds the same bytes), verify
    the copy, then delete the source. Returns the copy and a line for the audit.
    """
    for key in keys:
        there = head(s3, bucket, key)
        if there is None:
            dest = copy(s3, src, bucket, key)
            problem = verify(s3, dest, size=src.size, sha256=sha256, etag=src.etag)
            if problem is not None:
                delete(s3, dest)  # our own copy of a key that was free: nothing of anyone else's
                raise S3ActionError(
                    f"{src.describe()}: the copy did not verify ({problem}); the copy was removed, the source kept"
                )
            break
        existing = _located(bucket, key, there)
        if verify(s3, existing, size=src.size, sha256=sha256, etag=None) is None:
            dest = existing  # copied before (a move interrupted after its copy): the same bytes
            break
    else:
        raise S3ActionError(
            f"{src.describe()}: every quarantine key ({', '.join(f's3://{bucket}/{k}' for k in keys)}) holds "
            "other content; nothing was copied or deleted"
        )
    if not still_current(s3, src):
        raise S3ActionError(
            f"{src.describe()} changed while it was being moved; the verified copy stays at {dest.describe()}, "
            "the source was not deleted"
        )
    delete(s3, src)
    return dest, f"moved {src.describe()} to {dest.describe()}: {src.size} bytes, sha256 verified, source deleted"

"""S3 actions against moto's S3 server over HTTP: tags, verified quarantine moves, redelivery,
versioned buckets. The performer is handed each outbox event as the deliverer would.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from moderator.actions.s3 import S3Actions
from moderator.actions.s3_ops import S3ActionError
from moderator.settings import Settings
from moderator.store import Store
from moderator.store.tables import S3ActionState
from moderator.types import Action
from tests.actions import s3_support
from tests.actions.s3_support import body, config, dismiss, events, exists, image, judge, log, tags, upload
from tests.sources import conftest as s3_fixtures

# Fixtures (assigned, so that pytest finds them in this module)
moto_endpoint, aws, s3, bucket = s3_fixtures.moto_endpoint, s3_fixtures.aws, s3_fixtures.s3, s3_fixtures.bucket
settings = s3_support.settings
quarantine, writes = s3_support.quarantine, s3_support.writes


# -- tagging ----------------------------------------------------------------------------------


def test_a_block_tags_the_object_and_keeps_the_owners_tags(
    s3: Any, bucket: str, store: Store, settings: Settings
) -> None:
    data = image(1)
    etag = upload(s3, bucket, "u/cat.jpg", data, tagging="team=red&keep=yes")
    judge(store, f"s3://{bucket}/u/cat.jpg", data, etag, Action.BLOCK)
    (event,) = events(store, f"s3://{bucket}/u/cat.jpg")
    assert event.type == "item.decided" and event.decision is Action.BLOCK

    outcome = S3Actions(settings, store, config()).act(event)

    assert outcome.outcome == "done"
    assert tags(s3, bucket, "u/cat.jpg") == {
        "team": "red",
        "keep": "yes",
        "moderation": "block",
        "moderation-policies": "nsfw",
        "moderation-version": "nsfw:nsfw-version",
    }
    assert body(s3, bucket, "u/cat.jpg") == data  # tagged, not moved
    [(step, result_, detail)] = log(store, f"s3://{bucket}/u/cat.jpg")
    assert (step, result_) == ("tag", "done") and "2 own tags kept" in detail


def test_a_review_decision_tags_with_review(s3: Any, bucket: str, store: Store, settings: Settings) -> None:
    data = image(2)
    etag = upload(s3, bucket, "r.jpg", data)
    judge(store, f"s3://{bucket}/r.jpg", data, etag, Action.REVIEW)
    S3Actions(settings, store, config()).act(events(store, f"s3://{bucket}/r.jpg")[-1])
    assert tags(s3, bucket, "r.jpg")["moderation"] == "review"


# -- quarantine moves -------------------------------------------------------------------------


def test_a_block_moves_the_object_to_quarantine_verified_then_deleted(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    data = image(3)
    etag = upload(s3, bucket, "u/bad.jpg", data, tagging="team=red")
    judge(store, f"s3://{bucket}/u/bad.jpg", data, etag, Action.BLOCK)

    S3Actions(settings, store, config(quarantine)).act(events(store, f"s3://{bucket}/u/bad.jpg")[-1])

    assert not exists(s3, bucket, "u/bad.jpg")
    moved = f"blocked/{bucket}/u/bad.jpg"
    assert body(s3, quarantine, moved) == data
    head = s3.head_object(Bucket=quarantine, Key=moved)
    assert head["Metadata"] == {"owner": "alice"} and head["ContentType"] == "image/jpeg"
    assert tags(s3, quarantine, moved) == {
        "team": "red",
        "moderation": "block",
        "moderation-policies": "nsfw",
        "moderation-version": "nsfw:nsfw-version",
    }
    steps = log(store, f"s3://{bucket}/u/bad.jpg")
    assert [(s, o) for s, o, _ in steps] == [("tag", "done"), ("move", "done")]
    assert "sha256 verified, source deleted" in steps[-1][2]


def test_a_multipart_object_is_verified_by_its_sha256_and_moved(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    part1, part2 = image(4, 5 * 1024 * 1024), image(5, 1000)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="big.jpg")["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(Bucket=bucket, Key="big.jpg", UploadId=upload_id, PartNumber=n, Body=b)["ETag"],
        }
        for n, b in ((1, part1), (2, part2))
    ]
    s3.complete_multipart_upload(Bucket=bucket, Key="big.jpg", UploadId=upload_id, MultipartUpload={"Parts": parts})
    etag = s3.head_object(Bucket=bucket, Key="big.jpg")["ETag"].strip('"')
    assert etag.endswith("-2")  # a multipart ETag: not the MD5 of the bytes, the copy's differs
    judge(store, f"s3://{bucket}/big.jpg", part1 + part2, etag, Action.BLOCK)

    S3Actions(settings, store, config(quarantine, tag=False)).act(events(store, f"s3://{bucket}/big.jpg")[-1])

    assert not exists(s3, bucket, "big.jpg")
    assert body(s3, quarantine, f"blocked/{bucket}/big.jpg") == part1 + part2


def test_a_copy_that_fails_deletes_nothing(s3: Any, bucket: str, store: Store, settings: Settings) -> None:
    data = image(6)
    etag = upload(s3, bucket, "keep.jpg", data)
    judge(store, f"s3://{bucket}/keep.jpg", data, etag, Action.BLOCK)
    performer = S3Actions(settings, store, config("no-such-quarantine-bucket", tag=False))

    with pytest.raises(S3ActionError, match="no-such-quarantine-bucket"):
        performer.act(events(store, f"s3://{bucket}/keep.jpg")[-1])

    assert body(s3, bucket, "keep.jpg") == data
    [(step, outcome, detail)] = log(store, f"s3://{bucket}/keep.jpg")
    assert (step, outcome) == ("move", "failed") and "CopyObject" in detail
    with store.session() as db:
        state = db.get(S3ActionState, f"s3://{bucket}/keep.jpg")
        assert state is None or (state.moved_to is None and state.last_seq == 0)


def test_a_copy_that_does_not_verify_deletes_nothing(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    from moderator.sources.s3 import client

    data, other = image(7), image(8)  # the same size, other bytes
    etag = upload(s3, bucket, "judged.jpg", data)
    decoy_etag = upload(s3, bucket, "decoy.jpg", other)
    judge(store, f"s3://{bucket}/judged.jpg", data, etag, Action.BLOCK)

    def wrong_source(params: dict[str, Any], **_: Any) -> None:
        # A store that copies the wrong bytes: the request S3 gets names another object.
        params["CopySource"] = f"{bucket}/decoy.jpg"  # botocore has already encoded it as text
        params["CopySourceIfMatch"] = f'"{decoy_etag}"'

    performer_s3 = client("s3", settings)
    performer_s3.meta.events.register("before-parameter-build.s3.CopyObject", wrong_source)
    try:
        with pytest.raises(S3ActionError, match="did not verify"):
            S3Actions(settings, store, config(quarantine, tag=False)).act(
                events(store, f"s3://{bucket}/judged.jpg")[-1]
            )
    finally:
        performer_s3.meta.events.unregister("before-parameter-build.s3.CopyObject", wrong_source)

    assert body(s3, bucket, "judged.jpg") == data  # the source is kept
    assert not exists(s3, quarantine, "blocked/")  # and the wrong copy removed
    assert log(store, f"s3://{bucket}/judged.jpg")[-1][:2] == ("move", "failed")


def test_a_move_interrupted_after_its_copy_completes_on_retry(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings, writes: list[str]
) -> None:
    data = image(9)
    etag = upload(s3, bucket, "half.jpg", data)
    judge(store, f"s3://{bucket}/half.jpg", data, etag, Action.BLOCK)
    # What a performer killed between CopyObject and DeleteObject leaves behind.
    s3.copy_object(
        Bucket=quarantine, Key=f"blocked/{bucket}/half.jpg", CopySource={"Bucket": bucket, "Key": "half.jpg"}
    )

    S3Actions(settings, store, config(quarantine, tag=False)).act(events(store, f"s3://{bucket}/half.jpg")[-1])

    assert writes == ["DeleteObject"]  # verified the copy there, did not copy again
    assert not exists(s3, bucket, "half.jpg") and body(s3, quarantine, f"blocked/{bucket}/half.jpg") == data


def test_a_quarantine_key_holding_other_bytes_is_not_overwritten(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    data = image(10)
    etag = upload(s3, bucket, "again.jpg", data)
    upload(s3, quarantine, f"blocked/{bucket}/again.jpg", image(11))  # an earlier upload's quarantined copy
    judge(store, f"s3://{bucket}/again.jpg", data, etag, Action.BLOCK)

    S3Actions(settings, store, config(quarantine, tag=False)).act(events(store, f"s3://{bucket}/again.jpg")[-1])

    assert body(s3, quarantine, f"blocked/{bucket}/again.jpg") == image(11)
    sha = hashlib.sha256(data).hexdigest()
    assert body(s3, quarantine, f"blocked/{bucket}/again.jpg.{sha[:16]}") == data


# -- idempotency ------------------------------------------------------------------------------


def test_the_same_event_delivered_twice_does_nothing_the_second_time(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings, writes: list[str]
) -> None:
    data = image(12)
    etag = upload(s3, bucket, "twice.jpg", data)
    judge(store, f"s3://{bucket}/twice.jpg", data, etag, Action.BLOCK)
    (event,) = events(store, f"s3://{bucket}/twice.jpg")
    performer = S3Actions(settings, store, config(quarantine))

    assert performer.act(event).outcome == "done"
    first = list(writes)
    assert performer.act(event).outcome == "no_op"
    assert S3Actions(settings, store, config(quarantine)).act(event).outcome == "no_op"  # another process

    assert first == ["PutObjectTagging", "CopyObject", "DeleteObject"] and writes == first
    assert body(s3, quarantine, f"blocked/{bucket}/twice.jpg") == data
    assert [o for _, o, _ in log(store, f"s3://{bucket}/twice.jpg")] == ["done", "done", "no_op", "no_op"]


# -- versioned buckets ------------------------------------------------------------------------


def test_versioned_bucket_the_judged_version_moves_and_a_newer_upload_survives(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    bad, newer = image(13), image(14)
    etag = upload(s3, bucket, "v.jpg", bad)
    judge(store, f"s3://{bucket}/v.jpg", bad, etag, Action.BLOCK)
    upload(s3, bucket, "v.jpg", newer)  # a new upload under the same key before the action ran

    S3Actions(settings, store, config(quarantine)).act(events(store, f"s3://{bucket}/v.jpg")[-1])

    assert body(s3, bucket, "v.jpg") == newer
    assert "moderation" not in tags(s3, bucket, "v.jpg")
    versions = s3.list_object_versions(Bucket=bucket, Prefix="v.jpg")
    assert len(versions["Versions"]) == 1 and not versions.get("DeleteMarkers")  # exactly the judged one deleted
    assert body(s3, quarantine, f"blocked/{bucket}/v.jpg") == bad


def test_versioned_bucket_dismissal_restores_the_version_on_top(
    s3: Any, bucket: str, quarantine: str, store: Store, settings: Settings
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old, bad = image(15), image(16)
    upload(s3, bucket, "w.jpg", old)
    etag = upload(s3, bucket, "w.jpg", bad)
    judge(store, f"s3://{bucket}/w.jpg", bad, etag, Action.BLOCK)
    performer = S3Actions(settings, store, config(quarantine))
    performer.act(events(store, f"s3://{bucket}/w.jpg")[-1])
    assert body(s3, bucket, "w.jpg") == old  # the older version is current once the judged one is gone

    dismiss(store, f"s3://{bucket}/w.jpg")
    for event in events(store, f"s3://{bucket}/w.jpg")[1:]:
        performer.act(event)

    assert body(s3, bucket, "w.jpg") == bad
    assert "moderation" not in tags(s3, bucket, "w.jpg")
    assert not exists(s3, quarantine, "blocked/")

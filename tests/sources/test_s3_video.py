"""Videos from S3 (moto server): a bounded download (max_image_bytes, checked on the listing and the
response) of each object, then the same decoding as every file."""

from __future__ import annotations

from typing import Any

from moderator.pipeline import Pipeline
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import Store
from moderator.types import ItemStatus
from tests import videos


def test_videos_in_a_bucket_are_scanned_and_bounded(s3: Any, bucket: str, settings: Settings) -> None:
    clip = videos.video("mp4", n=40)
    objects = {
        "in/clip.mp4": clip,
        "in/clip.webm": videos.video("webm", n=40),
        "in/long.mkv": videos.ten_hours("mkv"),
        "in/audio.m4a": videos.audio_only("mp4"),
        "in/big.mp4": clip + bytes(10_000),  # over the byte limit: refused before any byte is fetched
    }
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    tiny = settings.model_copy(
        update={
            "model": "test-tiny",
            "pretrained": "none",
            "policies": [SHIPPED_POLICIES / "tags.yaml"],
            "video_frames": 3,
            "max_image_bytes": 10_000,
        }
    )
    store = Store(tiny.database_url)
    Pipeline(tiny, store).scan_targets([f"s3://{bucket}/in/"])
    rows = {r.uri.rsplit("/", 1)[1]: r for r in store.iter_export()}
    assert rows["clip.mp4"].status == ItemStatus.OK and len(rows["clip.mp4"].meta["frame_times"]) == 4
    assert rows["long.mkv"].status == ItemStatus.ERROR and "VIDEO_MAX_SECONDS" in (rows["long.mkv"].error or "")
    assert rows["audio.m4a"].status == ItemStatus.ERROR and "no video stream" in (rows["audio.m4a"].error or "")
    assert rows["clip.webm"].status == ItemStatus.OK
    assert rows["big.mp4"].status != ItemStatus.OK and "MAX_IMAGE_BYTES" in (rows["big.mp4"].error or "").upper()

"""`Pipeline.scan_targets(["s3://bucket/prefix"])` end to end: moto S3, SQLite store, test-tiny.

Random weights: these tests check flow, identity, skipping and errors, never scores.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from moderator.cli import app
from moderator.pipeline import Pipeline
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.sources.s3 import source
from moderator.store import ExportRow, Store
from moderator.types import ItemStatus


def image(color: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def pipeline(settings: Settings) -> Pipeline:
    tiny = settings.model_copy(
        update={
            "model": "test-tiny",
            "pretrained": "none",
            "policies": [SHIPPED_POLICIES / "tags.yaml"],
            "batch_size": 4,
        }
    )
    return Pipeline(tiny, Store(tiny.database_url))


def rows(pipeline: Pipeline) -> dict[str, ExportRow]:
    return {r.uri.rsplit("/", 1)[1]: r for r in pipeline.store.iter_export()}


def test_a_prefix_scan_stores_identity_skips_unchanged_and_rescans_overwritten(
    s3: Any, bucket: str, pipeline: Pipeline
) -> None:
    objects = {
        "in/a.png": image("red"),
        "in/2024/b.jpg": image("green", "JPEG"),
        "in/2024/05/c 1.png": image("blue"),
        "in/notes.txt": b"not an image",
        "in/empty.jpg": b"",
        "out/skip.png": image("white"),
    }
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    target = f"s3://{bucket}/in/"

    first = pipeline.scan_targets([target])
    assert (first.scanned, first.errors, first.unchanged) == (3, 2, 0)
    stored = rows(pipeline)
    assert set(stored) == {"a.png", "b.jpg", "c 1.png", "notes.txt", "empty.jpg"}
    assert stored["a.png"].status is ItemStatus.OK
    assert stored["a.png"].meta["bucket"] == bucket and stored["a.png"].meta["key"] == "in/a.png"
    assert stored["a.png"].meta["etag"]
    assert stored["notes.txt"].status is ItemStatus.ERROR and stored["notes.txt"].error
    assert stored["empty.jpg"].status is ItemStatus.ERROR and stored["empty.jpg"].error

    second = pipeline.scan_targets([target])
    assert (second.scanned, second.unchanged) == (0, 5)  # nothing downloaded again: ETags unchanged

    s3.put_object(Bucket=bucket, Key="in/a.png", Body=image("black"))
    third = pipeline.scan_targets([target])
    assert (third.scanned, third.unchanged) == (1, 4)
    assert rows(pipeline)["a.png"].sha256 != stored["a.png"].sha256
    assert len(list(pipeline.store.iter_export())) == 5


def test_an_object_deleted_between_listing_and_fetch_is_recorded(
    s3: Any, bucket: str, pipeline: Pipeline, settings: Settings
) -> None:
    s3.put_object(Bucket=bucket, Key="d/kept.png", Body=image("red"))
    s3.put_object(Bucket=bucket, Key="d/gone.png", Body=image("blue"))
    listed = list(source.iter_items(f"s3://{bucket}/d/", settings))
    s3.delete_object(Bucket=bucket, Key="d/gone.png")

    summary = pipeline.scan(listed)
    assert (summary.scanned, summary.errors) == (1, 1)
    gone = rows(pipeline)["gone.png"]
    assert gone.status is ItemStatus.ERROR
    assert gone.error is not None and "no longer exists" in gone.error


@pytest.mark.parametrize("down", [False, True], ids=["no-such-bucket", "endpoint-down"])
def test_the_scan_command_ends_an_s3_failure_in_one_line(
    aws: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, down: bool
) -> None:
    """Was a 77-line traceback: one line, what failed and the fix, exit code 2."""
    if down:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s.getsockname()[1]}")
        monkeypatch.setenv("MODERATOR_S3_MAX_ATTEMPTS", "1")
    args = ["scan", "s3://nosuchbucket/x", "--policy", str(SHIPPED_POLICIES / "known_bad.yaml")]
    result = CliRunner().invoke(app, [*args, "--database-url", f"sqlite:///{tmp_path / 'store.db'}"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    expected = "cannot reach the S3 endpoint" if down else "there is no bucket 'nosuchbucket'"
    assert line.startswith("error: s3://nosuchbucket/x: ") and expected in line and "AWS_ENDPOINT_URL" in line

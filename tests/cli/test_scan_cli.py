"""`moderator scan` as a user runs it: folders and archives, --json, --quiet, re-runs, bad paths."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moderator.cli import app
from moderator.cli.scan import count_targets
from moderator.settings import Settings
from tests.conftest import CLIP_POLICIES

runner = CliRunner()


def scan_args(settings: Settings, *paths: Path) -> list[str]:
    args = ["scan", *map(str, paths), "--database-url", settings.database_url, "--model", "test-tiny"]
    args += ["--pretrained", "none", "--device", "cpu", "--batch-size", "4"]
    for policy in CLIP_POLICIES:
        args += ["--policy", str(policy)]
    return args


@pytest.fixture
def photo_tgz(photo_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "photos.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(photo_dir, arcname="photos")
    return path


def test_json_summary_then_rerun_skips_everything(tiny_settings: Settings, photo_dir: Path, photo_tgz: Path) -> None:
    result = runner.invoke(app, [*scan_args(tiny_settings, photo_dir, photo_tgz), "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    assert (first["scanned"], first["unchanged"], first["errors"], first["interrupted"]) == (12, 0, 0, False)
    assert sum(first["decisions"].values()) == 12
    assert {"decode", "embed", "store"} <= set(first["stage_seconds"])

    again = json.loads(runner.invoke(app, [*scan_args(tiny_settings, photo_dir, photo_tgz), "--json"]).stdout)
    assert (again["scanned"], again["unchanged"]) == (0, 12)


def test_quiet_prints_only_the_summary_line(tiny_settings: Settings, photo_dir: Path) -> None:
    result = runner.invoke(app, [*scan_args(tiny_settings, photo_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # no table
    assert "scanned 6, unchanged 0, errors 0, skipped 0" in result.stderr


def test_unreadable_path_is_an_error_exit(tiny_settings: Settings, tmp_path: Path) -> None:
    result = runner.invoke(app, scan_args(tiny_settings, tmp_path / "missing"))
    assert result.exit_code == 2
    assert "no source can read" in result.output


def test_help_tells_about_archives_and_interrupts() -> None:
    result = runner.invoke(app, ["scan", "--help"])
    assert result.exit_code == 0
    for words in ("zip or tar", "Ctrl-C", "--json", "--quiet", "--precision"):
        assert words in result.output


def test_progress_total_is_counted_where_cheap(tiny_settings: Settings, photo_dir: Path, photo_tgz: Path) -> None:
    zipped = photo_tgz.with_suffix("").with_suffix(".zip")
    with zipfile.ZipFile(zipped, "w") as zf:
        for path in sorted(photo_dir.rglob("*.jpg")):
            zf.write(path, path.relative_to(photo_dir).as_posix())
    plain = photo_tgz.with_suffix("")  # photos.tar
    with tarfile.open(plain, "w") as tf:
        tf.add(photo_dir, arcname="photos")
    assert count_targets([str(photo_dir), str(zipped), str(plain)], tiny_settings) == 18
    assert count_targets([str(photo_dir), str(photo_tgz)], tiny_settings) is None  # would mean decompressing it all


def test_force_rescores_every_item(tiny_settings: Settings, photo_dir: Path) -> None:
    assert runner.invoke(app, [*scan_args(tiny_settings, photo_dir), "--json"]).exit_code == 0
    forced = runner.invoke(app, [*scan_args(tiny_settings, photo_dir), "--json", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (json.loads(forced.stdout)["scanned"], json.loads(forced.stdout)["unchanged"]) == (6, 0)


def test_ctrl_c_before_the_first_batch_says_nothing_was_stored(
    tiny_settings: Settings, photo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal
    import time

    from moderator import pipeline

    real_init = pipeline.Pipeline.__init__

    def ctrl_c_while_loading(self: pipeline.Pipeline, *args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C while policies and the model load
        time.sleep(0.5)
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.Pipeline, "__init__", ctrl_c_while_loading)
    result = runner.invoke(app, [*scan_args(tiny_settings, photo_dir), "--json"])
    assert result.exit_code == 130
    assert "nothing was stored" in result.stderr and "run the same command again" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["interrupted"] is True and summary["scanned"] == 0

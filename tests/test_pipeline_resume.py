"""Interrupted scans: what is done stays stored, and a rerun finishes the rest without redoing it.

In-process with a stop event (what Ctrl-C sets), and as a real `moderator scan` process
stopped by SIGINT or killed by SIGKILL mid-scan.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moderator.pipeline import Pipeline
from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import Store
from tests.conftest import jpeg_bytes

N = 300


def make_photos(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:04d}.jpg").write_bytes(jpeg_bytes(i, (48, 32)))
    return folder


def test_stop_event_ends_after_the_batch_in_hand(tiny_settings: Settings, store: Store, tmp_path: Path) -> None:
    folder = make_photos(tmp_path / "photos", 20)
    stop = threading.Event()
    first = Pipeline(tiny_settings, store).scan_targets([str(folder)], progress=lambda n: stop.set(), stop=stop)
    assert first.interrupted and first.scanned == tiny_settings.batch_size
    assert store.counts()["items"] == first.scanned
    rest = Pipeline(tiny_settings, store).scan_targets([str(folder)])
    assert not rest.interrupted
    assert (rest.unchanged, rest.scanned) == (first.scanned, 20 - first.scanned)
    assert store.counts()["items"] == 20


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("select count(*) from items").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def _scan_process(folder: Path, db: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "MODERATOR_MODEL": "test-tiny",
        "MODERATOR_PRETRAINED": "none",
        "MODERATOR_DEVICE": "cpu",
        "MODERATOR_BATCH_SIZE": "1",  # many small transactions: the signal lands mid-scan
        "MODERATOR_DATABASE_URL": f"sqlite:///{db}",
        "MODERATOR_POLICIES": f'["{SHIPPED_POLICIES / "tags.yaml"}"]',
    }
    code = "from moderator.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "scan", str(folder), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_items(proc: subprocess.Popen[str], db: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _stored(db) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the scan stored nothing in time"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_scan_process_resumes(sig: signal.Signals, tmp_path: Path) -> None:
    folder = make_photos(tmp_path / "photos", N)
    db = tmp_path / "store.db"
    proc = _scan_process(folder, db)
    _wait_for_items(proc, db)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    stored = _stored(db)
    assert 0 < stored < N, "the signal should land mid-scan"
    if sig is signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr
        assert '"interrupted": true' in stdout  # the --json summary is still printed
    else:
        assert proc.returncode == -signal.SIGKILL

    settings = Settings(
        database_url=f"sqlite:///{db}",
        model="test-tiny",
        pretrained="none",
        device="cpu",
        policies=[SHIPPED_POLICIES / "tags.yaml"],
    )
    store = Store(settings.database_url)
    try:
        rest = Pipeline(settings, store).scan_targets([str(folder)])
        assert (rest.unchanged, rest.scanned, rest.errors) == (stored, N - stored, 0)
        assert store.counts()["items"] == N
    finally:
        store.close()


@pytest.mark.slow
def test_ctrl_c_while_the_scan_starts_says_what_was_stored(tmp_path: Path) -> None:
    folder = make_photos(tmp_path / "photos", 20)
    db = tmp_path / "store.db"
    proc = _scan_process(folder, db)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "store: ..." comes before policies and the model load
    assert line.startswith("store:"), line + proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "nothing was stored" in stderr or "what was scanned is stored" in stderr, stderr
    assert '"interrupted": true' in stdout

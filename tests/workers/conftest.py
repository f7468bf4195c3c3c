"""Real parts for the queue tests: a private redis-server, `moderator worker` subprocesses.

Each test module starts its own redis-server on a free port (no persistence), so tests can
never touch another database and no state leaks between modules.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from moderator.settings import SHIPPED_POLICIES, Settings
from moderator.store import JobInfo, JobState, Store
from tests.conftest import jpeg_bytes

REPO = Path(__file__).resolve().parents[2]
TAGS_POLICY = SHIPPED_POLICIES / "tags.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_exe() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    return exe


class RedisServer:
    """A private redis-server on a fixed port that a test can stop and start again (a broker outage).

    Without `data_dir` nothing is persisted: a restart comes back empty, as a Redis without
    persistence does. With it, an append-only file keeps the data across the restart.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.exe = redis_exe()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.data_dir is None:
            args += ["--appendonly", "no"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer()
    server.start()
    yield server.url
    server.stop()


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The worker's environment: the same settings the test enqueues with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATOR_")}
    for name in (
        "database_url",
        "broker_url",
        "model",
        "pretrained",
        "device",
        "backend",
        "batch_size",
        "queue_name",
        "visibility_timeout",
        "max_deliveries",
        "task_max_retries",
        "queue_repair_interval",
        "worker_metrics_port",
        "decode_workers",
    ):
        env[f"MODERATOR_{name.upper()}"] = str(
            getattr(settings, name).value if name in ("device", "backend") else getattr(settings, name)
        )
    env["MODERATOR_POLICIES"] = json.dumps([str(p) for p in settings.policies])
    env["MODERATOR_WORKER_IMPORTS"] = json.dumps(settings.worker_imports)
    env["PYTHONPATH"] = str(REPO)
    env["OMP_NUM_THREADS"] = "1"  # two shared cores: keep torch from oversubscribing them
    env.update(extra)
    return env


def make_settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path / 'store.db'}",
        "broker_url": redis_url,
        "model": "test-tiny",
        "pretrained": "none",
        "device": "cpu",
        # PyTorch: no ONNX export on a worker's first batch (seconds on a shared CPU, past a 10 s time limit).
        "backend": "torch",
        "batch_size": 4,
        "decode_workers": 2,
        "queue_batch_size": 4,
        "queue_name": f"q{free_port()}",  # a queue per test: nothing left over from another test
        "policies": [TAGS_POLICY],
        "worker_metrics_port": 0,
        "worker_imports": ["tests.workers.testsource"],
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Worker:
    """A `moderator worker` subprocess in its own process group (so a kill takes its children too)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._file = log.open("ab")
        cmd = [sys.executable, "-m", "moderator.cli.worker", "--loglevel=INFO", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def batch_lines(self) -> list[dict[str, object]]:
        found = []
        for line in self.text().splitlines():
            if line.startswith("{") and '"event": "batch"' in line:
                found.append(json.loads(line))
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._file.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._file.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(env: dict[str, str], *args: str) -> Worker:
        worker = Worker(env, tmp_path / f"worker{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_job(
    store: Store,
    job_id: str,
    timeout: float,
    until: Callable[[JobInfo], bool] | None = None,
    workers: list[Worker] = (),
) -> JobInfo:
    """Poll the job until `until` (default: finished); fail with the workers' logs on timeout."""
    done = until or (lambda j: j.state in (JobState.DONE, JobState.FAILED))
    deadline = time.monotonic() + timeout
    while True:
        job = store.get_job(job_id)
        assert job is not None
        if done(job):
            return job
        for w in workers:
            if w.proc.poll() is not None and until is None and all(x.proc.poll() is not None for x in workers):
                pytest.fail(f"every worker exited; last log:\n{w.text()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(w.text()[-3000:] for w in workers)
            pytest.fail(f"job {job_id} still {job.state} after {timeout:.0f}s: {job}\n{logs}")
        time.sleep(0.3)


def write_images(folder: Path, n: int, seed: int = 0, names: Callable[[int], str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / (names(i) if names else f"img{i:03d}.jpg")
        path.write_bytes(jpeg_bytes(seed + i))
        paths.append(path)
    return paths


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL schema of the test's own on 127.0.0.1:5432/test, dropped afterwards."""
    from tests.store.conftest import _pg_schema, _pg_user

    with _pg_schema(_pg_user()) as url:
        yield url

"""`moderator worker`: a Celery worker for queued scans, with defaults for the machine it runs on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from moderator.cli.common import BatchOpt, DatabaseOpt, DeviceOpt, ModelOpt, PolicyOpt, PretrainedOpt, make_settings

POOLS = ("prefork", "solo", "threads")


def visible_gpus() -> list[str]:
    """GPU ids this process may use, found without initialising CUDA (the pool forks later)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    proc = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(proc.iterdir())))] if proc.is_dir() else []


def default_concurrency(device: str, gpus: list[str]) -> int:
    """One process per GPU; on CPU one process (torch already uses every core for one batch)."""
    return len(gpus) if device != "cpu" and gpus else 1


def worker_argv(*, pool: str, concurrency: int, queues: str, loglevel: str) -> list[str]:
    return [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--loglevel={loglevel}",
        f"--hostname=moderator-{os.getpid()}@%h",
        # No broadcast chatter between workers: they share nothing but the queue and the database.
        "--without-gossip",
        "--without-mingle",
    ]


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", min=1, help="Worker processes (default: one per GPU, else 1)."),
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            "--pool", help="prefork (default: a crash or hard time limit costs one child, not the worker) or solo."
        ),
    ] = "prefork",
    queues: Annotated[
        str | None, typer.Option("--queues", "-Q", help="Comma-separated queues (default MODERATOR_QUEUE_NAME).")
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Celery log level.")] = "INFO",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", help="Prometheus /metrics port, 0 for none (env MODERATOR_WORKER_METRICS_PORT)."
        ),
    ] = None,
    broker_url: Annotated[
        str | None, typer.Option("--broker-url", help="Celery broker URL (env MODERATOR_BROKER_URL).")
    ] = None,
    database_url: DatabaseOpt = None,
    policy: PolicyOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
) -> None:
    """Take queued batches, score them with the same pipeline as `moderator scan`, store the results.

    The model is loaded once per worker process (on CUDA in half precision when present).
    Policy files are re-read when they change. Stop with Ctrl-C or SIGTERM: the batch in hand
    is finished first; a worker killed outright loses nothing (its batch is redelivered after
    MODERATOR_VISIBILITY_TIMEOUT seconds).
    """
    if pool not in POOLS:
        raise typer.BadParameter(f"one of {', '.join(POOLS)}", param_hint="--pool")
    overrides = {
        "broker_url": broker_url,
        "database_url": database_url,
        "policies": [str(p.resolve()) for p in policy] if policy else None,
        "model": model,
        "pretrained": pretrained,
        "device": device,
        "batch_size": batch_size,
        "worker_metrics_port": metrics_port,
    }
    settings = make_settings(**overrides)  # refuses bad values here, with the flag to fix
    # Pool processes read their settings from the environment: hand the flags on that way.
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"MODERATOR_{name.upper()}"] = _env_value(value)
    gpus = visible_gpus() if settings.device.value != "cpu" else []
    n = concurrency or default_concurrency(settings.device.value, gpus)
    if len(gpus) > 1 and pool == "prefork":
        from workers.celery_app import GPU_ENV

        os.environ[GPU_ENV] = ",".join(gpus)

    from workers.celery_app import app  # configured from the environment set above

    app.worker_main(worker_argv(pool=pool, concurrency=n, queues=queues or settings.queue_name, loglevel=loglevel))


def _env_value(value: object) -> str:
    import json

    return json.dumps(value) if isinstance(value, list) else str(value)


if __name__ == "__main__":  # `python -m moderator.cli.worker` (tests; before the command is wired)
    typer.run(worker)

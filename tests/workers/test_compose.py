"""docker/compose.yaml stays a valid deployment: `docker compose config` where it exists, else a structural check."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
DOCKER = COMPOSE.parent


def _has_compose() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="docker compose is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    run = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_compose_file_has_the_services_a_deployment_needs() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"redis", "postgres", "minio", "worker", "api"} <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            assert host.isdigit() and container.isdigit(), f"{name}: bad port mapping {port!r}"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in doc.get("volumes", {}), f"{name}: undeclared volume {source}"
    assert not services["worker"].get("ports"), "fixed host ports would stop `--scale worker=N`"
    for name in ("worker", "api"):
        env = services[name]["environment"]
        assert env["MODERATOR_BROKER_URL"].startswith("redis://redis:")
        assert "@postgres:5432/" in env["MODERATOR_DATABASE_URL"]
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"

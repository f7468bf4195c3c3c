"""A wheel (a plain, non-editable install) carries the shipped policies and finds them by itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"nsfw", "violence", "tags", "opennsfw", "known_bad", "known_bad_similar"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the sources (the checkout gets no build/ folder), without network."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("moderator", "workers"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    (built,) = out.glob("moderator-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_shipped_policies_and_their_list(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"moderator/shipped_policies/{p}.yaml" for p in SHIPPED} <= names
    assert "moderator/shipped_policies/lists/known_bad.txt" in names


@pytest.mark.slow
def test_an_installed_wheel_loads_the_default_policies_from_itself(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    code = (
        "import json, moderator\n"
        "from moderator.policy.load import load_policies\n"
        "from moderator.settings import Settings\n"
        "loaded = load_policies(Settings().policy_paths())\n"
        "print(json.dumps({'package': moderator.__file__, 'policies': {p.spec.name: str(p.path) for p in loaded}}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["package"]).is_relative_to(site)  # the wheel's copy, not the checkout
    assert set(found["policies"]) >= SHIPPED
    assert all(Path(p).is_relative_to(site) for p in found["policies"].values())


def test_the_numpy_requirement_excludes_numpy_1() -> None:
    """hashlists.hamming uses np.bitwise_count, new in NumPy 2.0."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (numpy,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "numpy"]
    assert not numpy.specifier.contains("1.26.4") and numpy.specifier.contains("2.0.0")


def test_files_named_in_pyproject_exist() -> None:
    import re

    named = re.findall(r"[\w./-]+\.(?:md|py|toml|Dockerfile)\b", (ROOT / "pyproject.toml").read_text())
    assert named, "the check found nothing to check"
    missing = [n for n in named if not (ROOT / n).exists()]
    assert not missing, f"pyproject.toml names files that do not exist: {missing}"

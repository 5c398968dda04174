"""Paths, tools and generated secrets shared by the deployment tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def tool(name: str) -> str:
    """A linter installed by the `test` extra: beside this Python first (the venv), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `pip install -e '.[test]'` installs it (scripts/setup.sh does)")
    return found


def jitproxy_bin() -> Path:
    """The project's own `jitproxy` command (the venv's console script)."""
    path = Path(sys.executable).parent / "jitproxy"
    if not path.is_file():
        pytest.fail(f"{path} is missing: install the project (pip install -e .)")
    return path


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What docker/gen-secrets.sh writes (certs/ and secrets/), in a temporary directory."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed by docker/gen-secrets.sh")
    out = tmp_path_factory.mktemp("gen-secrets")
    subprocess.run(["sh", str(DOCKER / "gen-secrets.sh"), str(out)], check=True, capture_output=True, timeout=60)
    return out

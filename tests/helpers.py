"""Small helpers shared by test modules: running the `jitproxy` CLI in-process, and waiting for
a condition with a deadline (never a fixed sleep)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from proxy.cli import main
from proxy.environments import Environments, InstanceEnvironments

T = TypeVar("T")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`jitproxy argv...` in this process (environment as the caller set it): exit code, stdout,
    stderr. argparse and our own SystemExit messages count as exit code 1."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = 0 if e.code in (0, None) else 1
        print(e.code, file=sys.stderr)
    out = capsys.readouterr()
    return code, out.out, out.err


def api_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], proxy: Any, user: str,
            groups: tuple[str, ...], *argv: str, ca: Any = None) -> tuple[int, str]:
    """The CLI as `user` (a token with `groups`) against `proxy`'s admin API: code and all output."""
    monkeypatch.setenv("JITPROXY_TOKEN", proxy.token(user, groups))
    if ca is not None:
        monkeypatch.setenv("JITPROXY_API", f"https://127.0.0.1:{proxy.server.api.port}")
        monkeypatch.setenv("JITPROXY_CA", str(ca))
    code, out, err = run_cli(capsys, *argv)
    return code, out + err


def environments(databases: dict[str, str] | None = None, default: str | None = None,
                 instance: str = "default") -> Environments:
    """One instance's environments, as `upstream: {environment: DEFAULT, environments: DATABASES}`
    makes them (proxy.environments)."""
    return Environments({instance: InstanceEnvironments(default, dict(databases or {}))})


HR_ENVIRONMENTS = {"hr_prod": "prod", "hr_test": "test"}  # the demo's (and most tests'): upstream.environments


def eventually(condition: Callable[[], T], timeout_s: float = 10.0, step_s: float = 0.01) -> T:
    """The first truthy result of `condition()` within `timeout_s`, else its last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(step_s)


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py as a module (bench/ is not a package), registered in sys.modules first (its
    dataclasses look their module up) as bench_NAME."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = module
    spec.loader.exec_module(module)
    return module

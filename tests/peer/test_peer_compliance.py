"""SQLAlchemy's compliance suite and its MySQL dialect tests, directly and through jitproxy: any test
that passes directly and not through the proxy fails this test unless tests/peer/refusals.yaml
lists it as a reviewed refusal by design. The script builds its own venv (SQLAlchemy from its PyPI
sdist), MariaDB and `jitproxy serve`; see bench/peer_suites.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 3600


@pytest.mark.peer
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_sqlalchemy_suite_through_jitproxy(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "bench" / "peer_suites.py"), "--suites", "compliance,mysql",
           "--gate", str(ROOT / "tests" / "peer" / "refusals.yaml"), "--report", str(report)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
                            stdin=subprocess.DEVNULL)
    out = result.stdout + result.stderr
    assert report.exists(), f"no report (exit {result.returncode}):\n{out[-6000:]}"
    data = json.loads(report.read_text())
    for name, selection in data["selections"].items():
        assert selection["direct"]["counts"]["passed"] > 0, f"{name}: nothing passed even directly:\n{out[-4000:]}"
    if result.returncode != 0:
        # The summary (counts, the causes histogram) is at the end of the output.
        summary = out[out.rfind("Causes ("):] if "Causes (" in out else out[-6000:]
        gate = data.get("gate", {})
        pytest.fail(f"peer_suites.py exited {result.returncode}: {gate.get('unreviewed', '?')} test(s) pass directly "
                    f"but not through jitproxy and are not reviewed in tests/peer/refusals.yaml (selections not "
                    f"compared: {gate.get('incomplete_selections')}; jitproxy exited: {data.get('proxy_exited')})"
                    f"\n{summary[:12000]}")

"""`jitproxy audit search` and `audit chain` out of the box: the real `jitproxy demo` (whose
audit trail is one file sink, no store sink) answers them, as the README shows, with filters
by person, table, decision and time, and CSV / JSON export; the chain verifies. Before, both
answered `refused (404): this proxy does not store its audit trail` (issue 17)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import yaml

JITPROXY = Path(sys.executable).parent / "jitproxy"
CMD = [str(JITPROXY)] if JITPROXY.exists() else [sys.executable, "-m", "proxy.cli"]


class Demo:
    def __init__(self, directory: Path, lines: list[str]) -> None:
        text = "".join(lines)
        self.directory = directory
        self.port = int(re.search(r"ready on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        self.api = re.search(r"JITPROXY_API=(https://[^\s]+)", text).group(1)  # type: ignore[union-attr]

    def token(self, user: str) -> str:
        return (self.directory / f"{user}.token").read_text().strip()

    def query(self, user: str, sql: str) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user=user, password=self.token(user),
                               database="hr_prod", ssl=ssl.create_default_context(cafile=str(self.directory / "ca.pem")))
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        except pymysql.MySQLError:
            pass
        finally:
            conn.close()

    def cli(self, user: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "JITPROXY_API": self.api, "JITPROXY_CA": str(self.directory / "ca.pem"),
               "JITPROXY_TOKEN": self.token(user)}
        return subprocess.run([*CMD, *argv], capture_output=True, text=True, timeout=60, env=env, input=stdin)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    directory = tmp_path_factory.mktemp("search-demo") / "demo"
    proc = subprocess.Popen([*CMD, "demo", "--dir", str(directory), "--port", "0", "--api-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline and "Ctrl-C stops everything" not in "".join(lines[-1:]):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    try:
        assert "Ctrl-C stops everything" in "".join(lines), "".join(lines)
        yield Demo(directory, lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_the_demo_keeps_its_trail_in_a_file_only(demo: Demo) -> None:
    sinks = yaml.safe_load((demo.directory / "config.yaml").read_text())["audit"]["sinks"]
    assert [s["type"] for s in sinks] == ["file"]  # what this test is about: no store sink


def test_search_filters_and_exports_on_the_demo(demo: Demo) -> None:
    demo.query("dev", "SELECT COUNT(*) FROM employee")
    demo.query("dev", "SELECT * FROM salary")  # denied
    demo.query("admin", "SELECT COUNT(*) FROM salary")

    found = demo.cli("admin", "audit", "search", "--user", "dev", "--decision", "deny", "--table", "hr_prod.salary")
    assert found.returncode == 0, found.stderr
    assert "statement.denied" in found.stdout and "SELECT * FROM salary" in found.stdout
    assert "does not store" not in found.stdout + found.stderr

    exported = demo.cli("admin", "audit", "search", "--user", "dev", "--since", "10m", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert {r["user"] for r in rows} == {"dev"}
    assert {"statement.denied", "statement.completed"} <= {r["type"] for r in rows}
    denied = next(r for r in rows if r["type"] == "statement.denied")
    assert denied["decision"] == "deny" and denied["tables"] == "hr_prod.salary"

    as_json = demo.cli("admin", "audit", "search", "--table", "hr_prod.salary", "--format", "json")
    events = json.loads(as_json.stdout)
    assert {e["user"] for e in events if e["type"].startswith("statement.")} == {"dev", "admin"}
    cut = demo.cli("admin", "audit", "search", "--limit", "1", "--format", "csv")
    assert len(cut.stdout.splitlines()) == 2 and "more may match" in cut.stderr  # an export cut short says so
    future = demo.cli("admin", "audit", "search", "--since", "2999-01-01", "--format", "json")
    assert json.loads(future.stdout) == []

    refused = demo.cli("dev", "audit", "search")
    assert refused.returncode != 0 and "refused (403)" in refused.stderr  # admins and auditors only


def test_the_chain_of_the_demo_verifies(demo: Demo) -> None:
    demo.query("dev", "SELECT COUNT(*) FROM title")
    newest = json.loads(demo.cli("admin", "audit", "search", "--limit", "1", "--format", "json").stdout)
    chain = demo.cli("admin", "audit", "chain", "--proxy-instance", newest[0]["proxy_instance"])
    assert chain.returncode == 0, chain.stderr
    assert [json.loads(line)["seq"] for line in chain.stdout.splitlines()][:3] == [1, 2, 3]
    verified = demo.cli("admin", "audit", "verify", "--allow-open", "-", stdin=chain.stdout)
    assert verified.returncode == 0, verified.stdout + verified.stderr

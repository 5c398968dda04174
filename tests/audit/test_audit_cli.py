"""`jitproxy audit search` and `jitproxy audit chain` through the real CLI against a running API
(uvicorn over TLS, a SQLite store filled by the real emitter): the table, JSON lines that are
byte for byte the lines the proxy wrote, filters, local times, paging, and the refusals."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jitproxy_demo.certs import TlsFiles
from proxy.api.app import create_app
from proxy.audit.events import AuditEmitter, EventType, FileSink, SessionInfo
from proxy.audit.store_sink import StoreSink
from tests.helpers import run_cli
from proxy.store import open_store
from proxy.store.base import Store
from proxy.workflow.runtime import ApiServer
from tests.audit.test_search_api import Verifier, _service

NOW = datetime.now(UTC).replace(microsecond=0)
LONG = "SELECT " + ", ".join(f"col_{i}" for i in range(40)) + "\n  FROM hr_prod.salary WHERE id = 1"


class RunningApi:
    """The admin API on a loopback port, served from an event loop in a thread of its own."""

    def __init__(self, app: Any, tls: TlsFiles) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="api", daemon=True)
        self.thread.start()
        self.server = ApiServer(app, "127.0.0.1", 0, str(tls.server_cert), str(tls.server_key))
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.url = f"https://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """A store and the audit file written alongside it, with the same events."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    lines = tmp_path / "audit.jsonl"
    at = {"now": NOW}
    audit = AuditEmitter([StoreSink(store), FileSink(lines, fsync=False)], instance="web-1:4242",
                         clock=lambda: at["now"])
    dev = SessionInfo("s-1", "10.0.0.1:5000", "dev", ("devs",), "mysql", instance="hr-prod", environment="prod")
    for i, (kind, fields) in enumerate([
        (EventType.SESSION_START, {}),
        (EventType.STATEMENT_ALLOWED, {"statement": "SELECT * FROM employee", "tables": ["hr_prod.employee"],
                                       "decision": "allow"}),
        (EventType.STATEMENT_DENIED, {"statement": LONG, "tables": ["hr_prod.salary"], "decision": "deny",
                                      "reason_code": "missing_grant"}),
        (EventType.STATEMENT_FAILED, {"statement_id": "s-1.1", "tables": ["hr_prod.employee"], "decision": "allow",
                                      "error_code": 1146}),
        (EventType.STATEMENT_DENIED, {"statement": "SELECT 'ünïcødé ☃' FROM salary", "tables": ["hr_prod.salary"],
                                      "decision": "deny", "reason_code": "missing_grant"}),
    ]):
        at["now"] = NOW - timedelta(minutes=50 - 10 * i)  # 50, 40, 30, 20 and 10 minutes ago
        audit.emit(kind, dev, **fields)
    audit.close()
    yield store, lines
    store.close()


@pytest.fixture
def api(trail: tuple[Store, Path], tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningApi]:
    store, _ = trail
    running = RunningApi(create_app(_service(store), Verifier(), audit_store=store,  # type: ignore[arg-type]
                                    auditor_groups=frozenset({"security"})), tls_files)
    monkeypatch.setenv("JITPROXY_API", running.url)
    monkeypatch.setenv("JITPROXY_CA", str(tls_files.ca_cert))
    yield running
    running.stop()



def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], token: str | None,
        *argv: str) -> tuple[int, str, str]:
    if token is None:
        monkeypatch.delenv("JITPROXY_TOKEN", raising=False)
    else:
        monkeypatch.setenv("JITPROXY_TOKEN", token)
    return run_cli(capsys, *argv)


def test_search_prints_a_readable_table(api: RunningApi, local_zone: None, monkeypatch, capsys) -> None:
    code, out, _ = cli(monkeypatch, capsys, "ines:security", "audit", "search", "--user", "dev", "--since", "1h")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "USER", "INSTANCE", "TYPE", "DECISION", "WHAT", "REASON/ERROR"]
    assert len(rows) == 5
    local = (NOW - timedelta(minutes=10)).astimezone(datetime.now().astimezone().tzinfo)
    assert local.utcoffset() == timedelta(hours=5, minutes=30)
    newest = rows[0].split()
    assert newest[:5] == [*local.strftime("%m-%d %H:%M:%S").split(), "dev", "hr-prod", "statement.denied"]
    assert rows[0].endswith("  missing_grant") and "SELECT 'ünïcødé ☃' FROM salary" in rows[0]
    long_row = rows[2]
    assert "SELECT col_0, col_1" in long_row and "…" in long_row and "\n" not in long_row
    cut = long_row[long_row.index("SELECT"):long_row.index("…") + 1]
    assert len(cut) == 60
    assert rows[1].endswith("1146") and "[s-1.1]" in rows[1]
    assert "mysql from 10.0.0.1:5000" in rows[4]


def test_search_filters_reach_the_api(api: RunningApi, monkeypatch, capsys) -> None:
    code, out, _ = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--user", "dev", "--since", "1h",
                       "--table", "hr_prod.salary", "--decision", "deny", "--json")
    assert code == 0
    found = [json.loads(line) for line in out.splitlines()]
    assert [e["statement"] for e in found] == ["SELECT 'ünïcødé ☃' FROM salary", LONG]
    code, out, _ = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--type", "statement.", "--since", "35m",
                       "--instance", "hr-prod", "--oldest-first", "--json")
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["statement.denied", "statement.failed",
                                                                      "statement.denied"]
    code, out, _ = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--session", "s-2")
    assert (code, out.strip()) == (0, "no events")


def test_json_lines_are_the_lines_the_proxy_wrote(api: RunningApi, trail, monkeypatch, capsys) -> None:
    _, lines = trail
    written = lines.read_text(encoding="utf-8").splitlines()
    code, out, _ = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--oldest-first", "--json")
    assert code == 0 and out.splitlines() == written
    code, out, _ = cli(monkeypatch, capsys, "ines:security", "audit", "chain", "--proxy-instance", "web-1:4242")
    assert code == 0 and out.splitlines() == written
    # Paged (a small page size) and from a seq on: the same lines.
    code, out, _ = cli(monkeypatch, capsys, "ada:dba", "audit", "chain", "--proxy-instance", "web-1:4242",
                       "--page-size", "2", "--json")
    assert out.splitlines() == written
    code, out, _ = cli(monkeypatch, capsys, "ada:dba", "audit", "chain", "--proxy-instance", "web-1:4242",
                       "--after-seq", "3")
    assert out.splitlines() == written[3:]


def test_a_local_time_without_a_zone_is_the_callers(api: RunningApi, local_zone: None, monkeypatch, capsys) -> None:
    since = (NOW - timedelta(minutes=25)).astimezone().replace(tzinfo=None).isoformat()  # local wall clock
    code, out, _ = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--since", since, "--json")
    assert code == 0 and [json.loads(line)["type"] for line in out.splitlines()] == [
        "audit.sealed", "statement.denied", "statement.failed"]  # the seal: at close, 10 minutes ago


def test_the_limit_and_a_note_when_more_may_match(api: RunningApi, monkeypatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 3  # header + 2
    assert "2 events shown; more may match" in err
    code, out, err = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--limit", "2", "--json")
    assert len(out.splitlines()) == 2


def test_refusals(api: RunningApi, monkeypatch, capsys) -> None:
    code, _, err = cli(monkeypatch, capsys, "dev:devs", "audit", "search", "--user", "dev")
    assert code == 1
    assert "refused (403): reading the audit trail is for admins and auditors (auditor groups: security)" in err
    code, _, err = cli(monkeypatch, capsys, "dev:devs", "audit", "chain", "--proxy-instance", "web-1:4242")
    assert code == 1 and "refused (403)" in err
    code, _, err = cli(monkeypatch, capsys, None, "audit", "search")
    assert code == 1 and "no token" in err
    code, _, err = cli(monkeypatch, capsys, "ada:dba", "audit", "search", "--limit", "0")
    assert code == 1 and "limit: 0 is not in 1..10000" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--table", "salary"], "jitproxy audit search: table: 'salary' is not db.table"),
    (["--since", "yesterday"], "since: 'yesterday' is neither a span"),
    (["--since", "1h", "--until", "2h"], "must be before until"),
    (["--type", "Statement Denied"], "is not an event type"),
])
def test_wrong_arguments_are_refused_before_any_call(argv: list[str], message: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("JITPROXY_API", "https://127.0.0.1:9")  # nothing there: no call is made
    code, _, err = cli(monkeypatch, capsys, "ada:dba", "audit", "search", *argv)
    assert code == 1 and message in err

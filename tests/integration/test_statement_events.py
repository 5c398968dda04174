"""The audit events of one statement, per audit mode, through a running proxy:
- fail_closed: `statement.allowed` is on record before the statement reaches the database,
  then `statement.completed` with the same fields and the result;
- best_effort: one event when the statement ends, except that a statement still running after
  ANNOUNCE_AFTER_S gets its `statement.allowed` while it runs;
- a statement whose database connection dies mid-way still ends on record (`statement.failed`);
- a connection idle past listen.idle_timeout_s is told why and closed (session.end says so)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from proxy.protocol.statement_audit import ANNOUNCE_AFTER_S
from tests.helpers import eventually
from tests.integration.conftest import client_ssl, local_proxy_config

POLICY = "grants:\n  - {subject: user:events, grant: hr_prod.title, privileges: [SELECT]}\n"


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, mariadb: LocalMariaDB, tls_files: TlsFiles,
            upstream_credentials: Credentials) -> Iterator[dict[str, RunningProxy]]:
    policies = tmp_path_factory.mktemp("events-policies")
    (policies / "grants.yaml").write_text(POLICY)
    running = {}
    try:
        for mode in ("fail_closed", "best_effort"):
            directory = tmp_path_factory.mktemp(mode)
            cfg = local_proxy_config(directory, mariadb, tls_files, upstream_credentials, policies, extra={
                "audit": {"mode": mode, "sinks": [{"type": "file", "path": str(directory / "audit.jsonl")}]},
                "listen": {"idle_timeout_s": 0.6},
            })
            running[mode] = RunningProxy(cfg)
        yield running
    finally:
        for proxy in running.values():
            proxy.stop()


def _connect(proxy: RunningProxy, tls_files: TlsFiles) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user="events", password=proxy.token("events"),
                           database="hr_prod", ssl=client_ssl(tls_files), autocommit=True)


def _count_titles(proxy: RunningProxy, tls_files: TlsFiles, marker: str) -> None:
    conn = _connect(proxy, tls_files)
    with conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM title /* {marker} */")
        assert cur.fetchall()[0][0] >= 0
    conn.close()
    assert proxy.ctx.audit.flush()


def _of(proxy: RunningProxy, marker: str) -> list[dict]:
    return [e for e in proxy.events if marker in (e.get("statement") or "")]


def test_fail_closed_writes_allowed_before_and_the_full_result_after(proxies, tls_files):
    proxy = proxies["fail_closed"]
    marker = uuid.uuid4().hex[:10]
    _count_titles(proxy, tls_files, marker)
    allowed, completed = _of(proxy, marker)
    assert (allowed["type"], completed["type"]) == ("statement.allowed", "statement.completed")
    assert allowed["seq"] < completed["seq"] and allowed["statement_id"] == completed["statement_id"]
    for key in ("statement", "fingerprint", "tables", "privileges", "grants", "db", "decision", "command"):
        assert completed[key] == allowed[key], key
    assert completed["rows"] == 1 and completed["tables"] == ["hr_prod.title"]


def test_best_effort_writes_one_event_per_quick_statement(proxies, tls_files):
    proxy = proxies["best_effort"]
    marker = uuid.uuid4().hex[:10]
    _count_titles(proxy, tls_files, marker)
    [event] = _of(proxy, marker)
    assert event["type"] == "statement.completed" and event["rows"] == 1 and event["grants"]


def test_best_effort_announces_a_long_statement_while_it_runs(proxies, tls_files):
    proxy = proxies["best_effort"]
    marker = uuid.uuid4().hex[:10]
    conn = _connect(proxy, tls_files)
    done = threading.Event()

    def run() -> None:
        with conn.cursor() as cur:
            cur.execute(f"SELECT SLEEP({ANNOUNCE_AFTER_S + 2}) /* {marker} */")
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert eventually(lambda: any(e["type"] == "statement.allowed" for e in _of(proxy, marker)),
                          timeout_s=ANNOUNCE_AFTER_S + 1.5)
        assert not done.is_set()  # on record while it still runs
    finally:
        worker.join(30)
        conn.close()
    assert done.is_set()
    assert proxy.ctx.audit.flush()
    allowed, completed = _of(proxy, marker)
    assert (allowed["type"], completed["type"]) == ("statement.allowed", "statement.completed")
    assert allowed["statement_id"] == completed["statement_id"] and completed["duration_ms"] >= ANNOUNCE_AFTER_S * 1000


@pytest.mark.parametrize("mode", ["fail_closed", "best_effort"])
def test_a_statement_whose_database_connection_dies_ends_on_record(proxies, mariadb, tls_files, mode):
    proxy = proxies[mode]
    marker = uuid.uuid4().hex[:10]
    conn = _connect(proxy, tls_files)
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")  # the upstream's thread id: the proxy relays it
        thread_id = cur.fetchone()[0]
    errors: list[Exception] = []

    def run() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT SLEEP(20) /* {marker} */")
        except pymysql.MySQLError as e:
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    assert eventually(lambda: any(marker in (row[1] or "") for row in mariadb.execute_root(
        "SELECT id, info FROM information_schema.processlist")))
    mariadb.execute_root(f"KILL {int(thread_id)}")  # the database drops the proxy's connection
    worker.join(30)
    conn.close()
    assert errors and errors[0].args[0] == 2013
    assert proxy.ctx.audit.flush()
    failed = [e for e in _of(proxy, marker) if e["type"] == "statement.failed"]
    assert len(failed) == 1 and "lost connection" in failed[0]["error"]
    assert failed[0]["statement"].startswith("SELECT SLEEP(20)") and failed[0]["user"] == "events"


def test_an_idle_connection_is_told_and_closed_after_idle_timeout(proxies, tls_files):
    proxy = proxies["best_effort"]
    conn = _connect(proxy, tls_files)
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        connection_id = cur.fetchone()[0]
    start = next(e for e in reversed(proxy.events) if e["type"] == "session.start"
                 and e["upstream_thread_id"] == connection_id)
    ended = eventually(lambda: next((e for e in proxy.events if e["type"] == "session.end"
                                     and e["session_id"] == start["session_id"]), None))
    assert ended is not None
    assert ended["reason"] == "idle_timeout"
    with pytest.raises(pymysql.MySQLError) as raised, conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert raised.value.args[0] in (4031, 2013)  # the 4031 it was sent, or the closed socket

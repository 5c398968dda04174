"""The audit store goes down (its PostgreSQL is stopped) under two running proxies:
- fail_closed: statements are refused with a clear error and none reaches MariaDB (its general
  log is read); once PostgreSQL is back statements run again, and the events kept meanwhile
  (the refusals) reach the store: nothing lost;
- best_effort: statements keep running and the drop counter rises past the queue bound.
PostgreSQL here is this module's own (the store tests' server is never stopped)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from jitproxy_demo.postgres import LocalPostgres
from proxy.audit.query import AuditQuery
from tests.helpers import eventually
from tests.integration.conftest import client_ssl, local_proxy_config

POLICY = "grants:\n  - {subject: user:outage, grant: hr_prod.title, privileges: [SELECT]}\n"


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    basedir = Path(tempfile.mkdtemp(prefix="jitpg-audit-", dir="/tmp"))  # the postgres user must enter it
    try:
        with LocalPostgres(basedir) as server:
            yield server
    finally:
        shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, mariadb: LocalMariaDB, tls_files: TlsFiles, upstream_credentials: Credentials,
            postgres: LocalPostgres) -> Iterator[dict[str, RunningProxy]]:
    policies = tmp_path_factory.mktemp("outage-policies")
    (policies / "grants.yaml").write_text(POLICY)
    mp = pytest.MonkeyPatch()
    mp.setenv("OUTAGE_STORE_DSN", postgres.create_database(f"audit_{uuid.uuid4().hex[:8]}"))
    running = {}
    try:
        for mode, queue in (("fail_closed", 100_000), ("best_effort", 20)):
            cfg = local_proxy_config(tmp_path_factory.mktemp(mode), mariadb, tls_files, upstream_credentials, policies,
                                     extra={"store": {"backend": "postgres", "dsn_env": "OUTAGE_STORE_DSN"},
                                            "audit": {"mode": mode, "max_queue": queue, "sinks": [{"type": "store"}]}})
            running[mode] = RunningProxy(cfg)
        yield running
    finally:
        for proxy in running.values():
            proxy.stop()
        mp.undo()


def _connect(proxy: RunningProxy, tls_files: TlsFiles) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user="outage", password=proxy.token("outage"),
                           database="hr_prod", ssl=client_ssl(tls_files), autocommit=True)


def _select(conn: pymysql.Connection, marker: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM title /* {marker} */")
        cur.fetchall()


def test_fail_closed_refuses_every_statement_while_the_audit_store_is_down(proxies, postgres, mariadb, tls_files):
    proxy = proxies["fail_closed"]
    conn = _connect(proxy, tls_files)
    before = f"audit-up-{uuid.uuid4().hex[:8]}"
    _select(conn, before)
    postgres.stop()
    try:
        down = [f"audit-down-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for marker in down:
            with pytest.raises(pymysql.MySQLError) as e:
                _select(conn, marker)
            assert e.value.args[0] == 1105
            assert "audit_unavailable" in e.value.args[1] and "nothing was sent" in e.value.args[1]
        health = _health(proxy)
        assert health["status"] == "degraded" and health["audit"]["sinks"]["store"]["up"] is False, health
        assert health["audit"]["refused_statements"] >= len(down) and "last_error" not in repr(health["audit"])
        assert str(postgres.port) not in repr(health)  # no host or port of the store (unauthenticated)
    finally:
        postgres.start()
    log = mariadb.general_log_path.read_text(errors="replace")
    assert before in log
    assert not any(marker in log for marker in down)  # not one reached the database
    after = f"audit-back-{uuid.uuid4().hex[:8]}"

    def runs_again() -> bool:
        try:
            _select(conn, after)
            return True
        except pymysql.MySQLError as e:
            assert e.args[0] == 1105  # refused until the sink's retry succeeds; never another error
            return False

    assert eventually(runs_again, timeout_s=20, step_s=0.05)
    conn.close()
    assert proxy.ctx.audit.flush(20)
    stored = proxy.ctx.audit_store.search_audit(AuditQuery(user="outage", limit=10_000))
    refusals = [e for e in stored if e["type"] == "statement.denied" and e["reason_code"] == "audit_unavailable"]
    assert {m for m in down if any(m in e["statement"] for e in refusals)} == set(down)  # kept, then written
    assert proxy.ctx.audit.refused >= len(down)
    # ok again once the state store's poller has read it once more (within its poll interval)
    assert eventually(lambda: _health(proxy)["status"] == "ok", timeout_s=10), _health(proxy)
    assert _health(proxy)["audit"]["sinks"]["store"]["up"] is True


def _health(proxy: RunningProxy) -> dict:
    """What GET /healthz answers."""
    async def read() -> dict:
        return proxy.server.health()

    return proxy.call(read())


def test_best_effort_keeps_serving_and_counts_dropped_events(proxies, postgres, tls_files):
    proxy = proxies["best_effort"]
    conn = _connect(proxy, tls_files)
    _select(conn, "best-effort-up")
    assert proxy.ctx.audit.dropped == 0, proxy.ctx.audit.stats()
    postgres.stop()
    try:
        for i in range(40):  # 80 events through a queue of 20
            _select(conn, f"best-effort-down-{i}")
        assert proxy.ctx.audit.dropped > 0
    finally:
        postgres.start()
    _select(conn, "best-effort-back")
    conn.close()
    stats = proxy.ctx.audit.stats()["sinks"]["store"]
    assert stats["dropped"] == proxy.ctx.audit.dropped and stats["failures"] >= 1

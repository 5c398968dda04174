"""The database goes away and comes back (a restart, a crash, an Aurora failover) while one
jitproxy keeps running: sessions see a clear MySQL error instead of a hang, new logins get
'jitproxy: ...' within the pool's connect deadline, and once the database is back a new session
works with no proxy restart and no stale pooled connection handed out.

The database here is this module's own MariaDB (the session-wide one is never stopped)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from jitproxy_demo.sample import create_proxy_upstream_user
from tests.integration.conftest import client_ssl, local_proxy_config

PASSWORD = "failover-upstream-password"
POLICY = """
grants:
  - subject: user:dev
    grant: "hr_test.*"
    privileges: [SELECT]
"""
ROWS = [(1, "ada"), (2, "grace")]
UPSTREAM_CONNECT_TIMEOUT_S = 1.0  # each connect attempt; the pool's deadline bounds the retries


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[LocalMariaDB]:
    server = LocalMariaDB(tmp_path_factory.mktemp("failover-db"), tls=tls_files)
    server.start()
    try:
        server.execute_script(
            "CREATE DATABASE hr_test;\n"
            "CREATE TABLE hr_test.person (id INT PRIMARY KEY, name VARCHAR(20));\n"
            "INSERT INTO hr_test.person VALUES (1, 'ada'), (2, 'grace');\n"
        )
        create_proxy_upstream_user(server, password=PASSWORD)
        yield server
    finally:
        _resume(server)
        server.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, db: LocalMariaDB, tls_files: TlsFiles) -> Iterator[RunningProxy]:
    policies = tmp_path_factory.mktemp("failover-policies")
    (policies / "base.yaml").write_text(POLICY)
    cfg = local_proxy_config(tmp_path_factory.mktemp("failover-proxy"), db, tls_files, Credentials("jitproxy", PASSWORD),
                             policies, extra={"upstream": {"connect_timeout_s": UPSTREAM_CONNECT_TIMEOUT_S,
                                                           # these scenarios are the pool's own; the
                                                           # health pinger has its test below
                                                           "health_interval_s": 3600}})
    proxy = RunningProxy(cfg)
    yield proxy
    proxy.stop()


@pytest.fixture
def up(db: LocalMariaDB, running: RunningProxy) -> LocalMariaDB:
    """Each scenario starts with the database up and answering through the proxy."""
    _resume(db)
    if not db.running:
        db.start()
    return db


def connect(running: RunningProxy, tls_files: TlsFiles) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=running.port, user="dev", password=running.token("dev"),
                           database="hr_test", ssl=client_ssl(tls_files), autocommit=True,
                           connect_timeout=10, read_timeout=30, write_timeout=30)


def query(conn: pymysql.Connection, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def health(running: RunningProxy) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        return running.ctx.pool.health()

    return running.call(read())


def wait_until(check: Callable[[], bool], bound_s: float = 10.0) -> None:
    deadline = time.monotonic() + bound_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {bound_s} s")
        time.sleep(0.02)


def pool_settled(running: RunningProxy) -> bool:
    """No session holds a connection, every released one has been reset and put back (or
    dropped), and at least one is idle."""

    async def read() -> bool:
        pool = running.ctx.pool
        return pool.health()["in_use"] == 0 and not pool._background and pool.idle_count() >= 1

    return running.call(read())


def set_ping_after_idle_s(running: RunningProxy, seconds: float) -> float:
    async def swap() -> float:
        pool = running.ctx.pool
        before, pool.ping_after_idle_s = pool.ping_after_idle_s, seconds
        return before

    return running.call(swap())


def mariadbd_pid(db: LocalMariaDB) -> int:
    return int(db.pid_file.read_text().strip())


def _resume(db: LocalMariaDB) -> None:
    """Undo a SIGSTOP (harmless otherwise), so the server can be stopped or killed cleanly."""
    if db.running:
        os.kill(mariadbd_pid(db), signal.SIGCONT)


def kill_9(db: LocalMariaDB) -> None:
    os.kill(mariadbd_pid(db), signal.SIGKILL)
    wait_until(lambda: not db.running)  # `running` reaps it


def test_a_stopped_database_ends_sessions_clearly_and_the_proxy_recovers_without_restart(up, running, tls_files):
    proxy_port, server = running.port, running.server
    session = connect(running, tls_files)
    assert query(session, "SELECT id, name FROM person ORDER BY id") == ROWS
    assert health(running)["state"] == "up"

    # (a) mid-session, the database stops: the next statement fails at once with a MySQL error
    up.stop()
    with pytest.raises(pymysql.err.OperationalError) as lost:
        query(session, "SELECT id, name FROM person ORDER BY id")
    assert lost.value.args[0] == 2013
    assert "(jitproxy)" in lost.value.args[1]
    with pytest.raises(pymysql.err.MySQLError):  # and the proxy ended the client connection
        session.ping(reconnect=False)
    session.close()

    # (b) while it is down, a new login fails clearly within the pool's deadline
    # (a hang would end in the client's own 30 s read timeout with 2013, not this answer)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(running, tls_files)
    assert refused.value.args[0] == 2003
    assert refused.value.args[1] == "jitproxy: the database is unreachable"
    healthz = httpx.get(f"https://127.0.0.1:{running.server.api.port}/healthz", verify=client_ssl(tls_files)).json()
    assert healthz["status"] == "degraded" and healthz["upstreams"]["default"]["state"] == "down", healthz
    down = health(running)
    assert down["state"] == "down" and down["last_error"] == "the database is unreachable", down
    assert PASSWORD not in repr(down)

    # (c) the database is back (same port, same data): the same proxy serves a new session
    up.start()
    again = connect(running, tls_files)
    assert query(again, "SELECT id, name FROM person ORDER BY id") == ROWS
    again.close()
    assert (running.port, running.server) == (proxy_port, server)
    back = health(running)
    healthz = httpx.get(f"https://127.0.0.1:{running.server.api.port}/healthz", verify=client_ssl(tls_files)).json()
    assert healthz["status"] == "ok" and healthz["upstreams"]["default"]["state"] == "up", healthz
    assert back["state"] == "up" and back["last_error"] == "the database is unreachable"
    assert back["last_ok"] > back["last_failure"] > down["last_ok"]  # ISO times in UTC: ordered as text


def test_a_killed_database_leaves_no_stale_pooled_connection(up, running, tls_files):
    session = connect(running, tls_files)
    assert query(session, "SELECT id, name FROM person ORDER BY id") == ROWS
    session.close()
    wait_until(lambda: pool_settled(running))
    opened = health(running)["opened"]

    # (d) kill -9: no goodbye to the pooled connection; then the database restarts
    kill_9(up)
    up.start()
    session = connect(running, tls_files)
    assert query(session, "SELECT id, name FROM person ORDER BY id") == ROWS
    session.close()
    assert health(running)["opened"] == opened + 1  # the pooled connection was not handed out
    assert health(running)["state"] == "up"


def test_a_hung_database_is_found_by_the_ping_and_logins_fail_within_the_deadline(up, running, tls_files):
    """Like a failover that leaves the old endpoint silent: connections stay open, nothing answers."""
    session = connect(running, tls_files)
    assert query(session, "SELECT id, name FROM person ORDER BY id") == ROWS
    session.close()
    wait_until(lambda: pool_settled(running))
    threshold = set_ping_after_idle_s(running, 0.0)  # every checkout pings: no waiting for the idle threshold
    os.kill(mariadbd_pid(up), signal.SIGSTOP)
    try:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect(running, tls_files)
        assert refused.value.args[0] == 2003  # not the client's own read timeout: no hang
        assert refused.value.args[1] == "jitproxy: the database did not answer in time"
        hung = health(running)
        assert hung["state"] == "down" and hung["idle"] == 0, hung  # the pinged connection and the rest: dropped
    finally:
        set_ping_after_idle_s(running, threshold)
        kill_9(up)
    up.start()
    session = connect(running, tls_files)
    assert query(session, "SELECT id, name FROM person ORDER BY id") == ROWS
    session.close()
    assert health(running)["state"] == "up"


def test_a_frozen_database_is_seen_by_the_health_ping_within_seconds(up, tmp_path_factory, tls_files):
    """SIGSTOP: the database accepts and says nothing. The health pinger marks it not responding
    within its interval + timeout: /healthz is degraded, the statement waiting on it fails with a
    clear error, a new login fails at once ("not responding"), all logged; SIGCONT: back to ok."""
    policies = tmp_path_factory.mktemp("frozen-policies")
    (policies / "base.yaml").write_text(POLICY)
    cfg = local_proxy_config(tmp_path_factory.mktemp("frozen-proxy"), up, tls_files, Credentials("jitproxy", PASSWORD),
                             policies, extra={"upstream": {"health_interval_s": 0.2, "health_timeout_s": 0.5}})
    proxy = RunningProxy(cfg)
    try:
        session = connect(proxy, tls_files)
        assert query(session, "SELECT id, name FROM person ORDER BY id") == ROWS
        api = f"https://127.0.0.1:{proxy.server.api.port}/healthz"
        os.kill(mariadbd_pid(up), signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(pymysql.err.OperationalError) as waiting:
                query(session, "SELECT id, name FROM person ORDER BY id")  # waits on the frozen database
            assert time.monotonic() - started < 10  # not the client's 30 s read timeout
            assert waiting.value.args[0] == 2013 and "not responding" in waiting.value.args[1], waiting.value.args
            healthz = httpx.get(api, verify=client_ssl(tls_files)).json()
            assert healthz["status"] == "degraded" and not healthz["upstreams"]["default"]["responding"], healthz
            readyz = httpx.get(api.replace("healthz", "readyz"), verify=client_ssl(tls_files))
            assert readyz.status_code == 503 and readyz.json()["problems"] == ["default: the database is not responding"]
            started = time.monotonic()
            with pytest.raises(pymysql.err.OperationalError) as refused:
                connect(proxy, tls_files)
            assert time.monotonic() - started < 3  # at once, not after timeouts
            assert refused.value.args == (2003, "jitproxy: the database is not responding")
            ends = [e for e in proxy.events if e["type"] == "session.end" and e.get("reason") == "upstream_not_responding"]
            assert ends
        finally:
            _resume(up)
        wait_until(lambda: httpx.get(api, verify=client_ssl(tls_files)).json()["status"] == "ok")
        again = connect(proxy, tls_files)
        assert query(again, "SELECT id, name FROM person ORDER BY id") == ROWS
        again.close()
    finally:
        proxy.stop()

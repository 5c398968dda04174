"""Limits and faults against a real MariaDB: silent sockets, one address or one person cannot
hold every slot; failed logins back off and lock; an exhausted pool answers clearly; a session
ends with its token; a statement past its time limit is cancelled on the database, and so is one
whose client left."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from datetime import timedelta

import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import MutableClock, RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from tests.helpers import eventually
from tests.integration.conftest import client_ssl, local_proxy_config
from tests.integration.rawclient import RawClient

GRANTS = """grants:
  - {subject: user:dev, grant: hr_prod.title, privileges: [SELECT]}
  - {subject: user:ops, grant: "hr_prod.*", privileges: [SELECT]}
  - {subject: user:sleeper, grant: "*.*", privileges: [SELECT]}
"""

LIMITS = {
    "max_handshakes": 30,
    "max_handshakes_per_address": 5,
    "max_connections_per_address": 40,
    "max_connections_per_user": 3,
    "login_failures": {"window_s": 300, "free": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
                       "lockout_after": 4, "lockout_s": 600},
}


def _start(tmp_path_factory, mariadb, tls_files, credentials, name: str, upstream: dict | None = None,
           identity: dict | None = None, clock=None) -> RunningProxy:
    policies = tmp_path_factory.mktemp(f"{name}-policies")
    (policies / "grants.yaml").write_text(GRANTS)
    extra: dict = {"limits": LIMITS, "audit": {"mode": "best_effort"}, "listen": {"handshake_timeout_s": 20}}
    if upstream:
        extra["upstream"] = upstream
    if identity:
        extra["identity"] = identity
    cfg = local_proxy_config(tmp_path_factory.mktemp(name), mariadb, tls_files, credentials, policies, extra=extra)
    return RunningProxy(cfg, clock=clock)


@pytest.fixture(scope="module")
def limited(tmp_path_factory, mariadb: LocalMariaDB, tls_files: TlsFiles,
            upstream_credentials: Credentials) -> Iterator[RunningProxy]:
    running = _start(tmp_path_factory, mariadb, tls_files, upstream_credentials, "limits",
                     upstream={"statement_timeout_s": 1, "pool": {"max_size": 6, "acquire_timeout_s": 0.5}})
    yield running
    running.stop()


def _connect(proxy: RunningProxy, tls_files: TlsFiles, user: str = "dev", token: str | None = None,
             bind: str | None = None, **kw) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user=user, password=token or proxy.token(user),
                           ssl=client_ssl(tls_files), autocommit=True, connect_timeout=10, read_timeout=30,
                           bind_address=bind, **kw)


def _silent(port: int, source: str) -> socket.socket:
    """A TCP connection that reads the greeting and then says nothing."""
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _answer(s: socket.socket) -> bytes:
    """The first packet the proxy sends on `s` (a greeting, or an ERR refusing the connection)."""
    header = b""
    while len(header) < 4:
        chunk = s.recv(4 - len(header))
        if not chunk:
            return b""
        header += chunk
    length = int.from_bytes(header[:3], "little")
    body = b""
    while len(body) < length:
        body += s.recv(length - len(body))
    return body


def _error_code(payload: bytes) -> int | None:
    return struct.unpack_from("<H", payload, 1)[0] if payload[:1] == b"\xff" else None


def _events(proxy: RunningProxy, type_: str, **match) -> list[dict]:
    return [e for e in proxy.events if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())]


# -- connections that have not logged in --------------------------------------------------------


def test_silent_sockets_from_one_address_cannot_lock_out_others(limited, tls_files):
    """The issue's "20 silent TCP sockets lock everyone out": they fill their address's handshake
    slots, the next from that address is refused at once (1040), people elsewhere log in."""
    socks = [_silent(limited.port, "127.0.0.2") for _ in range(LIMITS["max_handshakes_per_address"])]
    try:
        assert all(_answer(s)[:1] == b"\x0a" for s in socks)  # each got its greeting
        extra = _silent(limited.port, "127.0.0.2")
        started = time.monotonic()
        assert _error_code(_answer(extra)) == 1040
        assert time.monotonic() - started < 5  # at once, not after the handshake timeout
        extra.close()
        c = _connect(limited, tls_files)  # from 127.0.0.1
        with c.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        c.close()
        assert _events(limited, "session.rejected", reason_code="max_handshakes_per_address")
    finally:
        for s in socks:
            s.close()


def test_silent_sockets_from_many_addresses_never_take_logged_in_slots(limited, tls_files):
    """The total of handshakes is capped apart from sessions: a session logged in before keeps
    working, and the crowd is refused, not queued."""
    session = _connect(limited, tls_files, user="ops")
    socks = []
    try:
        for i in range(LIMITS["max_handshakes"]):
            s = _silent(limited.port, f"127.0.1.{10 + i % 6}")
            socks.append(s)
            assert _answer(s)[:1] == b"\x0a"
        extra = _silent(limited.port, "127.0.2.1")
        assert _error_code(_answer(extra)) == 1040
        extra.close()
        with session.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM hr_prod.title")
            assert cur.fetchone()[0] > 0
    finally:
        for s in socks:
            s.close()
        session.close()
    # the slots come back when the sockets go
    assert eventually(lambda: limited.call(_handshakes(limited)) == 0)
    _connect(limited, tls_files).close()


async def _handshakes(proxy: RunningProxy) -> int:
    return proxy.ctx.admission.handshakes


def test_pre_login_packet_is_capped(limited):
    """Memory before login is bounded: a 64 MiB "handshake" is refused from its header."""
    raw = RawClient(limited.port)
    try:
        raw.sock.sendall((0xFFFFFF).to_bytes(3, "little") + b"\x01" + b"x" * 65536)
        assert _error_code(raw.read()) == 1153
    finally:
        raw.close()


# -- per person ------------------------------------------------------------------------------


def test_one_person_cannot_hold_every_slot(limited, tls_files):
    held = [_connect(limited, tls_files, user="ops") for _ in range(LIMITS["max_connections_per_user"])]
    try:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            _connect(limited, tls_files, user="ops")
        assert refused.value.args[0] == 1203 and "max_connections_per_user" in refused.value.args[1]
        _connect(limited, tls_files, user="dev").close()  # someone else still gets in
        assert _events(limited, "session.rejected", reason_code="max_connections_per_user")
    finally:
        for c in held:
            c.close()
    assert eventually(lambda: limited.call(_sessions_of(limited, "ops")) == 0)
    _connect(limited, tls_files, user="ops").close()  # a slot given back is usable again


async def _sessions_of(proxy: RunningProxy, user: str) -> int:
    return proxy.ctx.admission._per_user.get(user, 0)


# -- failed logins ----------------------------------------------------------------------------


def test_failed_logins_back_off_then_lock_the_address_not_others(limited, tls_files):
    source = "127.0.3.1"
    codes = []
    for _ in range(LIMITS["login_failures"]["lockout_after"]):
        with pytest.raises(pymysql.err.OperationalError) as e:
            _connect(limited, tls_files, user="mallory", token="not-a-token", bind=source)
        codes.append(e.value.args[0])
    assert codes == [1045] * len(codes)
    # now locked: even a valid token from that address is refused, with a clear error
    with pytest.raises(pymysql.err.OperationalError) as locked:
        _connect(limited, tls_files, user="dev", bind=source)
    assert locked.value.args[0] == 1129 and "failed logins" in locked.value.args[1]
    # another address is not affected
    _connect(limited, tls_files, user="dev", bind="127.0.3.2").close()
    rejected = _events(limited, "session.rejected", client_addr=None) or limited.events
    assert any(e.get("lockout") for e in limited.events if e["type"] == "session.rejected")
    assert any(e.get("backoff_s") for e in limited.events if e["type"] == "session.rejected")
    assert any(e.get("reason_code") == "locked_address" for e in rejected if e["type"] == "session.rejected")


def test_a_person_locked_at_one_address_is_not_locked_elsewhere(limited, tls_files):
    source = "127.0.4.1"
    for _ in range(LIMITS["login_failures"]["lockout_after"]):
        with pytest.raises(pymysql.err.OperationalError):
            _connect(limited, tls_files, user="ops", token="expired.or.cut", bind=source)
    with pytest.raises(pymysql.err.OperationalError) as locked:
        _connect(limited, tls_files, user="ops", bind=source)
    assert locked.value.args[0] in (1129, 3955)
    _connect(limited, tls_files, user="ops", bind="127.0.4.2").close()


# -- the upstream pool -------------------------------------------------------------------------


def test_an_exhausted_pool_answers_too_many_connections_at_once(limited, tls_files):
    """max_size 6 (one is the health pinger's, outside the limit): the 7th session waits
    acquire_timeout_s, then is told why, and the refusal is audited as what it is."""
    held = []
    try:
        for user in ("dev", "dev", "ops", "ops", "sleeper", "sleeper"):
            held.append(_connect(limited, tls_files, user=user))
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as refused:
            _connect(limited, tls_files, user="sleeper")
        assert time.monotonic() - started < 5
        assert refused.value.args[0] == 1040 and "too many connections to default" in refused.value.args[1]
        assert _events(limited, "session.rejected", reason_code="upstream_pool_exhausted")
    finally:
        for c in held:
            c.close()


# -- statement time limit and cancels --------------------------------------------------------


def _running_sleeps(mariadb: LocalMariaDB, marker: str) -> list[tuple]:
    return [r for r in mariadb.execute_root("SELECT id, info FROM information_schema.PROCESSLIST "
                                             "WHERE info LIKE 'SELECT SLEEP%'") if marker in (r[1] or "")]


def test_statement_past_its_time_limit_is_cancelled_on_the_database(limited, tls_files, mariadb):
    c = _connect(limited, tls_files, user="sleeper")
    try:
        started = time.monotonic()
        with c.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as e:
                cur.execute("SELECT SLEEP(20) /* timeout-marker */")
            took = time.monotonic() - started
            assert e.value.args[0] == 1969 and "statement_timeout_s" in e.value.args[1], e.value.args
            assert took < 10
            cur.execute("SELECT 1")  # the session goes on
            assert cur.fetchone() == (1,)
        assert not _running_sleeps(mariadb, "timeout-marker")
        failed = [e for e in limited.events if e["type"] == "statement.failed" and "timeout-marker" in e["statement"]]
        assert failed and failed[-1]["reason_code"] == "statement_timeout"
    finally:
        c.close()


def test_a_statement_whose_client_left_does_not_keep_running(limited, tls_files, mariadb):
    """The client disconnects mid-statement: its upstream connection is killed on the database
    (the issue saw the statement in the processlist 7-10 s later)."""
    raw = RawClient(limited.port)
    raw.start_tls()
    assert raw.login("sleeper", limited.token("sleeper").encode())[:1] == b"\x00"
    raw.seq = 0
    raw.write(b"\x03SELECT SLEEP(30) /* left-marker */")
    assert eventually(lambda: bool(_running_sleeps(mariadb, "left-marker")))
    raw.close()
    # SLEEP(30) would run 30 s on its own: gone within 5 s means the proxy killed it
    assert eventually(lambda: not _running_sleeps(mariadb, "left-marker"), timeout_s=5), \
        "the statement kept running after its client left"


# -- the token's lifetime -----------------------------------------------------------------------


@pytest.fixture
def clocked(tmp_path_factory, mariadb, tls_files, upstream_credentials, request) -> Iterator[tuple[RunningProxy, MutableClock]]:
    clock = MutableClock()
    running = _start(tmp_path_factory, mariadb, tls_files, upstream_credentials, "token-life",
                     identity={"leeway_s": 5, "on_token_expiry": request.param}, clock=clock)
    yield running, clock
    running.stop()


@pytest.mark.parametrize("clocked", ["disconnect"], indirect=True)
@pytest.mark.parametrize("command_loop", [False, True], ids=["fast-path", "command-loop"])
def test_a_session_ends_at_its_first_statement_after_the_token_expired(clocked, tls_files, command_loop):
    running, clock = clocked
    c = _connect(running, tls_files, token=running.token("dev", ttl=timedelta(seconds=20)))
    with c.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM hr_prod.title")
        clock.advance(timedelta(seconds=24))  # past exp, within the leeway
        cur.execute("SELECT COUNT(*) FROM hr_prod.title")
        clock.advance(timedelta(seconds=2))
        with pytest.raises(pymysql.err.OperationalError) as e:
            cur.execute("SELECT 1" if command_loop else "SELECT COUNT(*) FROM hr_prod.title")
    assert e.value.args[0] == 1045 and "token expired" in e.value.args[1]
    with pytest.raises(pymysql.err.MySQLError):
        c.ping(reconnect=False)
    ends = [e for e in running.events if e["type"] == "session.end" and e.get("user") == "dev"]
    assert ends and ends[-1]["reason"] == "token_expired"
    denied = [e for e in running.events if e["type"] == "statement.denied" and e.get("reason_code") == "token_expired"]
    assert denied


@pytest.mark.parametrize("clocked", ["allow_until_idle"], indirect=True)
def test_allow_until_idle_keeps_the_open_session(clocked, tls_files):
    running, clock = clocked
    c = _connect(running, tls_files, token=running.token("dev", ttl=timedelta(seconds=20)))
    with c.cursor() as cur:
        clock.advance(timedelta(minutes=5))
        cur.execute("SELECT COUNT(*) FROM hr_prod.title")
        assert cur.fetchone()[0] > 0
    c.close()


def test_shutdown_past_its_grace_period_leaves_nothing_running_upstream(tmp_path_factory, mariadb, tls_files,
                                                                         upstream_credentials):
    """The issue saw a runaway statement in the processlist 7-10 s after jitproxy stopped: the
    grace period's end now kills what is still running, before stop() returns."""
    running = _start(tmp_path_factory, mariadb, tls_files, upstream_credentials, "grace")
    raw = RawClient(running.port)
    try:
        raw.start_tls()
        assert raw.login("sleeper", running.token("sleeper").encode())[:1] == b"\x00"
        raw.seq = 0
        raw.write(b"\x03SELECT SLEEP(30) /* grace-marker */")
        assert eventually(lambda: bool(_running_sleeps(mariadb, "grace-marker")))
        running.call(running.server.stop(grace_s=0.5))
        assert not _running_sleeps(mariadb, "grace-marker")
        ended = [e for e in running.events if e["type"] == "statement.failed" and "grace-marker" in e.get("statement", "")]
        assert ended and ended[-1]["outcome_unknown"] is True  # it was forwarded: it may have run
    finally:
        raw.close()
        running.stop()


def test_a_kill_never_hits_a_thread_id_that_is_not_this_connection(limited, tls_files):
    """After a restart or a failover the server reuses thread ids: a KILL meant for our old
    connection checks the PROCESSLIST's host:port first and leaves anybody else's alone."""
    c = _connect(limited, tls_files, user="ops")
    try:
        session = next(s for s in limited.ctx.sessions.values() if s.username == "ops")
        thread_id, port = session.upstream.thread_id, session.upstream.local_port
        instance = session.instance
        assert limited.call(instance.kill_query(thread_id, connection=True, port=port + 1)) is False
        with c.cursor() as cur:  # untouched
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert limited.call(instance.kill_query(thread_id, connection=True, port=port)) is True
        with pytest.raises(pymysql.MySQLError), c.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        c.close()

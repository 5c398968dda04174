"""Regression tests for mysql-mimic 3.0.5's defects and for the client-side
protocol surface: TLS, login, limits, prepared statements, reset, change-user and KILL."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import mysql.connector
import pymysql
import pytest

from jitproxy_demo.inprocess import RunningProxy, proxy_config
from tests.integration.conftest import client_ssl, direct
from tests.integration.rawclient import CLIENT_MULTI_STATEMENTS, RawClient, err_code


def pym(proxy, tls_files, user="dev", database="hr_prod", **kw):
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user=user, password=kw.pop("token", None) or proxy.token(user),
                           database=database, ssl=client_ssl(tls_files), **kw)


def connector(proxy, tls_files, user="dev", database="hr_prod"):
    return mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=user, password=proxy.token(user),
                                   database=database, ssl_ca=str(tls_files.ca_cert), use_pure=True, autocommit=True)


# -- TLS and login ---------------------------------------------------------------------------


def test_plaintext_client_is_refused_before_it_sends_a_token(proxy):
    raw = RawClient(proxy.port)
    reply = raw.login("dev", b"not-sent", tls=False)
    assert err_code(reply) == 3159 and b"requires TLS" in reply
    assert raw.is_closed_by_server()
    ev = [e for e in proxy.events if e["type"] == "session.rejected" and e.get("reason_code") == "tls_required"]
    assert ev


def test_failed_login_closes_the_connection_even_if_the_client_ignores_the_error(proxy, mariadb):
    """mysql-mimic wrote ERR 1045 and then ran the command loop with no user."""
    m = uuid.uuid4().hex
    raw = RawClient(proxy.port)
    raw.start_tls()
    reply = raw.login("dev", b"not-a-token")
    assert err_code(reply) == 1045
    try:
        raw.seq = 0
        raw.write(b"\x03SELECT * FROM hr_prod.employee /*" + m.encode() + b"*/")
        answer = raw.read()
    except (ConnectionError, OSError):
        answer = b""
    assert err_code(answer) is None or answer == b""
    assert not answer.startswith(b"\x01")  # no result set
    assert m not in mariadb.general_log_text()


def test_expired_token_is_refused(proxy, tls_files):
    token = proxy.issuer.issue("dev", ttl=timedelta(minutes=5))
    pym(proxy, tls_files, token=token).close()
    proxy.clock.advance(timedelta(minutes=10))
    try:
        with pytest.raises(pymysql.err.OperationalError) as e:
            pym(proxy, tls_files, token=token)
        assert e.value.args[0] == 1045
    finally:
        proxy.clock.offset = timedelta(0)
    assert any(e.get("reason_code") == "expired" for e in proxy.events)


def test_token_for_another_user_is_refused(proxy, tls_files):
    with pytest.raises(pymysql.err.OperationalError) as e:
        pym(proxy, tls_files, user="admin", token=proxy.token("dev"))
    assert e.value.args[0] == 1045 and "invalid or expired token" in e.value.args[1]


@pytest.mark.parametrize("plugin", ["mysql_native_password", "caching_sha2_password", "mysql_clear_password"])
def test_every_auth_path_reaches_the_token(proxy, plugin):
    """Clear password directly; caching_sha2 via full auth; others via an auth switch."""
    raw = RawClient(proxy.port)
    raw.start_tls()
    token = proxy.token("dev").encode()
    if plugin == "mysql_clear_password":
        reply = raw.login("dev", token, plugin)
    else:
        reply = raw.login("dev", b"\x01" * 20, plugin)
        if plugin != "caching_sha2_password":
            assert reply[:1] == b"\xfe" and b"caching_sha2_password" in reply  # auth switch
            raw.write(b"\x01" * 32)
            reply = raw.read()
        assert reply == b"\x01\x04"  # perform full authentication
        raw.write(token + b"\x00")
        reply = raw.read()
    assert reply[:1] == b"\x00", reply
    raw.close()


def test_many_tls_handshakes_in_a_row(proxy, tls_files):
    """The TLS upgrade raced with the ClientHello: about half of handshakes hung for 60 s."""
    token = proxy.token("dev")
    for _ in range(150):
        pym(proxy, tls_files, token=token, database=None, connect_timeout=10).close()


def test_multi_statements_flag_from_the_client_is_not_granted(proxy):
    raw = RawClient(proxy.port)
    caps = int.from_bytes(raw.handshake[raw.handshake.index(b"\x00", 1) + 1 + 4 + 9 : ][:2], "little")
    assert not caps & CLIENT_MULTI_STATEMENTS
    raw.close()


# -- limits ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_proxy(tmp_path_factory, mariadb, tls_files, upstream_credentials, policies_dir):
    cfg = proxy_config(
        tmp_path_factory.mktemp("strict"),
        upstream_host="127.0.0.1", upstream_port=mariadb.port,
        upstream_user=upstream_credentials.user, upstream_password=upstream_credentials.password,
        cert_file=tls_files.server_cert, key_file=tls_files.server_key, upstream_ca=tls_files.ca_cert,
        policies_dir=policies_dir,
        extra={"listen": {"handshake_timeout_s": 0.5, "max_packet_bytes": 64 * 1024},
               "authz": {"max_statement_bytes": 8192, "thread_offload_bytes": 1024}},
    )
    running = RunningProxy(cfg)
    yield running
    running.stop()


def test_silent_client_is_dropped_after_the_handshake_timeout(strict_proxy):
    raw = RawClient(strict_proxy.port)
    assert raw.handshake[:1] == b"\x0a"
    assert raw.is_closed_by_server()
    assert any(e.get("reason_code") == "handshake_timeout" for e in strict_proxy.events)


def test_oversized_packet_before_login_is_refused(strict_proxy):
    raw = RawClient(strict_proxy.port)
    raw.sock.sendall(b"\xff\xff\xff\x01")  # claims a 16 MiB payload
    assert err_code(raw.read()) == 1153
    assert raw.is_closed_by_server()


def test_oversized_query_gets_1153_and_the_connection_closes(strict_proxy, tls_files):
    c = pym(strict_proxy, tls_files, user="admin")
    with pytest.raises(pymysql.MySQLError) as e:
        c.cursor().execute("SELECT '" + "x" * 100_000 + "'")
    assert e.value.args[0] in (1153, 2013)


def test_garbage_handshake_gets_a_clean_error(proxy):
    raw = RawClient(proxy.port)
    raw.write(b"\x00" * 40)
    reply = raw.read()
    assert err_code(reply) in (1043, 3159)
    assert b"Traceback" not in reply and b"Error" not in reply[9:40]


def test_unknown_command_is_an_error_and_the_connection_keeps_going(proxy):
    raw = RawClient(proxy.port)
    raw.start_tls()
    assert raw.login("dev", proxy.token("dev").encode())[:1] == b"\x00"
    assert err_code(raw.command(b"\x09")) == 1047  # COM_STATISTICS
    assert err_code(raw.command(b"\xee")) == 1047
    assert raw.command(b"\x0e")[:1] == b"\x00"  # COM_PING still answered by the upstream
    raw.close()


def test_malformed_statement_id_is_a_clean_error(proxy):
    raw = RawClient(proxy.port)
    raw.start_tls()
    assert raw.login("dev", proxy.token("dev").encode())[:1] == b"\x00"
    assert err_code(raw.command(b"\x17\x01")) is not None  # COM_STMT_EXECUTE, truncated
    assert err_code(raw.command(b"\x17" + (999).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00")) == 1243
    assert raw.command(b"\x0e")[:1] == b"\x00"
    raw.close()


# -- prepared statements ---------------------------------------------------------------------


def test_prepared_parameters_are_bound_not_pasted(proxy, tls_files):
    c = connector(proxy, tls_files)
    cur = c.cursor(prepared=True)
    cur.execute("SELECT COUNT(*) FROM employee WHERE last_name = %s", ("x' OR '1'='1",))
    assert cur.fetchall()[0][0] == 0
    cur.execute("SELECT COUNT(*) FROM employee WHERE last_name = %s", ("back\\slash",))
    assert cur.fetchall()[0][0] == 0
    cur.execute("SELECT first_name FROM employee WHERE id = %s", (1,))
    assert len(cur.fetchall()) == 1
    c.close()


def test_binary_protocol_values_round_trip_exactly(proxy, tls_files, mariadb, upstream_credentials):
    admin = connector(proxy, tls_files, user="admin", database="hr_test")
    cur = admin.cursor()
    cur.execute("DROP TABLE IF EXISTS types_rt")
    cur.execute("CREATE TABLE types_rt (a TINYINT, b SMALLINT UNSIGNED, c BIGINT UNSIGNED, d DATE, "
                "e DECIMAL(10,2), f VARBINARY(10), g TIME, h DATETIME(3), i DOUBLE, j VARCHAR(20))")
    values = (-5, 40000, 2**64 - 1, __import__("datetime").date(2024, 2, 29), Decimal("12345678.91"),
              b"\x00\xff\x5c", timedelta(hours=26, minutes=3), __import__("datetime").datetime(2024, 1, 2, 3, 4, 5, 678000),
              -1.5e300, "Zoë 李 '\\")
    pcur = admin.cursor(prepared=True)
    pcur.execute("INSERT INTO types_rt VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", values)
    pcur.execute("SELECT * FROM types_rt")
    got = tuple(pcur.fetchall()[0])
    ref = direct(mariadb, upstream_credentials, tls_files, "hr_test")
    with ref.cursor() as rc:
        rc.execute("SELECT * FROM types_rt")
        assert rc.fetchone() == tuple(pymysql_equiv(v) for v in got)
    assert got[0] == -5 and got[1] == 40000 and got[2] == 2**64 - 1 and bytes(got[5]) == b"\x00\xff\x5c"
    assert got[9] == "Zoë 李 '\\"
    cur.execute("DROP TABLE types_rt")
    admin.close()


def pymysql_equiv(v):
    return bytes(v) if isinstance(v, bytearray) else v


def test_prepare_is_authorized_on_the_prepared_text(proxy, tls_files, mariadb):
    c = connector(proxy, tls_files)
    m = uuid.uuid4().hex
    with pytest.raises(mysql.connector.Error) as e:
        c.cursor(prepared=True).execute(f"SELECT * FROM salary WHERE employee_id = %s /*{m}*/", (1,))
    assert e.value.errno == 1142
    assert m not in mariadb.general_log_text()
    c.close()


def test_execute_is_denied_once_the_grant_has_ended(proxy, tls_files, policies_dir, monkeypatch):
    # the clock moves past the grant's end, and so past the token's: the session must outlive it
    monkeypatch.setattr(proxy.ctx, "on_token_expiry", "allow_until_idle")
    (policies_dir / "prep.yaml").write_text(
        "grants:\n  - {subject: user:prep, grant: hr_prod.title, privileges: [SELECT], expires_at: 2099-01-01T00:00:00Z}\n")
    proxy.ctx.grants.reload()
    try:
        c = connector(proxy, tls_files, user="prep")
        cur = c.cursor(prepared=True)
        cur.execute("SELECT COUNT(*) FROM title WHERE employee_id > %s", (0,))
        assert cur.fetchall()[0][0] > 0
        proxy.clock.advance(timedelta(days=365 * 80))
        with pytest.raises(mysql.connector.Error) as e:
            cur.execute("SELECT COUNT(*) FROM title WHERE employee_id > %s", (0,))
            cur.fetchall()
        assert e.value.errno == 1142
        c.close()
    finally:
        proxy.clock.offset = timedelta(0)
        (policies_dir / "prep.yaml").unlink()
        proxy.ctx.grants.reload()


# -- reset, change user, kill ----------------------------------------------------------------


def test_reset_connection_really_resets_the_upstream_session(proxy, tls_files):
    c = connector(proxy, tls_files, user="admin")
    cur = c.cursor()
    cur.execute("SET @leftover = 42")
    cur.execute("SET time_zone = '+03:00'")
    cur.execute("BEGIN")
    cur.execute("INSERT INTO hr_test.employee (first_name, last_name, email, hired_on, dept, created_at) "
                "VALUES ('Re','Set','reset@x','2020-01-01','x',NOW())")
    c.cmd_reset_connection()
    cur = c.cursor()
    cur.execute("SELECT @leftover, @@time_zone = '+03:00', DATABASE()")
    assert cur.fetchall() == [(None, 0, "hr_prod")]
    cur.execute("SELECT COUNT(*) FROM hr_test.employee WHERE email = 'reset@x'")  # rolled back
    assert cur.fetchall() == [(0,)]
    c.close()


def test_change_user_is_refused_cleanly(proxy, tls_files):
    c = connector(proxy, tls_files)
    with pytest.raises(mysql.connector.Error) as e:
        c.cmd_change_user(username="admin", password=proxy.token("admin"))
    assert e.value.errno in (1235, 2013, 2055)
    raw_ok = [ev for ev in proxy.events if ev.get("user") == "admin" and ev["type"] == "session.start"
              and ev.get("client_name") == "mysql-connector-python" and ev.get("db") == "hr_prod"]
    assert not raw_ok or all(ev.get("client_program") != "change-user" for ev in raw_ok)


def test_kill_only_own_connections(proxy, tls_files, mariadb):
    victim = pym(proxy, tls_files, user="dev")
    other = pym(proxy, tls_files, user="admin")
    with pytest.raises(pymysql.MySQLError) as e:
        other.cursor().execute(f"KILL {victim.thread_id()}")
    assert e.value.args[0] == 1095
    with victim.cursor() as cur:  # still alive
        cur.execute("SELECT 1")
    same_person = pym(proxy, tls_files, user="dev")
    same_person.cursor().execute(f"KILL CONNECTION {victim.thread_id()}")
    with pytest.raises(pymysql.MySQLError):
        with victim.cursor() as cur:
            cur.execute("SELECT 1")
            cur.execute("SELECT 1")
    for conn in (other, same_person):
        conn.close()


def test_kill_query_interrupts_the_upstream_statement(proxy, tls_files, mariadb):
    long_running = pym(proxy, tls_files, user="dev")
    result: dict[str, object] = {}

    def run() -> None:
        try:
            with long_running.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM employee a, employee b, employee c, employee d /* slowpoke */")
                result["rows"] = cur.fetchall()
        except pymysql.MySQLError as e:
            result["error"] = e.args[0]

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = mariadb.execute_root("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE '%slowpoke%' AND info NOT LIKE '%processlist%'")
        if rows[0][0]:
            break
        time.sleep(0.02)
    killer = pym(proxy, tls_files, user="dev")
    killer.cursor().execute(f"KILL QUERY {long_running.thread_id()}")
    t.join(30)
    assert result.get("error") == 1317
    with long_running.cursor() as cur:  # the session survives a killed query
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    long_running.close()
    killer.close()


def test_set_cannot_be_prepared(proxy, tls_files):
    """A prepared SET NAMES would change the server's charset without the proxy's decoder."""
    c = connector(proxy, tls_files, user="admin")
    with pytest.raises(mysql.connector.Error) as e:
        c.cursor(prepared=True).execute("SET NAMES latin1")
    assert e.value.errno == 1142
    c.close()


def test_set_names_changes_how_the_proxy_decodes(proxy, tls_files):
    c = pym(proxy, tls_files, user="admin", database="hr_test", charset="utf8mb4")
    with c.cursor() as cur:
        cur.execute("SET NAMES latin1")
        c.encoding = "latin1"  # what a latin1 client sends from now on
        cur.execute("SELECT @@character_set_client, 'Zo\u00eb'")
        assert cur.fetchone() == (b"latin1".decode(), "Zo\u00eb")
    c.close()


def test_first_client_sees_the_upstream_version(proxy, tls_files, mariadb, upstream_credentials):
    ref = direct(mariadb, upstream_credentials, tls_files)
    c = pym(proxy, tls_files, database=None)
    assert c.get_server_info() == ref.get_server_info() + "-jitproxy"
    c.close()
    ref.close()


def test_statement_over_the_analysis_limit_is_denied_clearly(strict_proxy, tls_files, mariadb):
    c = pym(strict_proxy, tls_files, user="admin")
    m = uuid.uuid4().hex
    with c.cursor() as cur:
        cur.execute("SELECT '" + "y" * 4000 + f"' AS offloaded /*{m}*/")  # analyzed in a worker thread
        assert len(cur.fetchone()[0]) == 4000
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT '" + "x" * 9000 + f"' /*{m}-long*/")
        assert e.value.args[0] == 1142 and "statement_too_long" in e.value.args[1] and "split it" in e.value.args[1]
        cur.execute("SELECT 1")  # the session goes on
    c.close()
    assert f"{m}-long" not in mariadb.general_log_text()


def test_shutdown_closes_idle_sessions_and_lets_a_running_statement_finish(
    tmp_path_factory, mariadb, tls_files, upstream_credentials, policies_dir
):
    cfg = proxy_config(
        tmp_path_factory.mktemp("shutdown"),
        upstream_host="127.0.0.1", upstream_port=mariadb.port,
        upstream_user=upstream_credentials.user, upstream_password=upstream_credentials.password,
        cert_file=tls_files.server_cert, key_file=tls_files.server_key, upstream_ca=tls_files.ca_cert,
        policies_dir=policies_dir,
    )
    running = RunningProxy(cfg)
    idle = pym(running, tls_files, user="admin")
    busy = pym(running, tls_files, user="admin")
    result: dict[str, object] = {}

    def run() -> None:
        with busy.cursor() as cur:
            cur.execute("SELECT SLEEP(1.5), 'done' /* shutdown-busy */")
            result["row"] = cur.fetchone()

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if mariadb.execute_root("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE '%shutdown-busy%' AND info NOT LIKE '%processlist%'")[0][0]:
            break
        time.sleep(0.02)
    running.call(running.server.stop(grace_s=30))
    t.join(30)
    assert result.get("row") == (0, "done")  # the running statement finished and was delivered
    with pytest.raises(pymysql.MySQLError):
        idle.cursor().execute("SELECT 1")  # the idle session was closed
    running.stop()


def test_login_into_an_ungranted_database_is_refused_with_1044(proxy, tls_files):
    with pytest.raises(pymysql.MySQLError) as e:
        pym(proxy, tls_files, user="dev", database="hr_test")
    assert e.value.args[0] == 1044 and "hr_test" in e.value.args[1]


@pytest.mark.parametrize("collation,name", [(28, "gbk"), (1, "big5"), (13, "sjis"), (95, "cp932")])
def test_multibyte_charsets_with_backslash_trail_bytes_are_refused(proxy, collation, name):
    raw = RawClient(proxy.port)
    raw.start_tls()
    reply = raw.login("dev", proxy.token("dev").encode(), collation=collation)
    assert err_code(reply) == 1115 and name.encode() in reply
    raw.close()


def test_client_vanishing_mid_result_does_not_poison_the_pool(proxy, tls_files):
    c = pym(proxy, tls_files, user="admin", cursorclass=pymysql.cursors.SSCursor)
    cur = c.cursor()
    cur.execute("SELECT a.employee_id, b.employee_id FROM salary a, salary b")  # 360,000 rows, streamed
    for _ in range(10):
        cur.fetchone()
    c._sock.close()  # gone without reading the rest
    for _ in range(3):
        fresh = pym(proxy, tls_files, user="admin")
        with fresh.cursor() as fcur:
            fcur.execute("SELECT COUNT(*) FROM employee")
            assert fcur.fetchone() == (300,)
        fresh.close()

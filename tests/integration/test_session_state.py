"""Drivers see the session's true state through jitproxy, as they would directly: the greeting
and every OK the proxy builds itself carry the upstream session's status (autocommit, in
transaction). PyMySQL and mysql-connector trust that flag at their defaults (autocommit off):
with status 0 they never sent SET autocommit=0, and a rollback committed."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import mysql.connector
import pymysql
import pytest

from tests.integration.conftest import client_ssl, direct
from tests.integration.rawclient import RawClient

TABLE = "hr_test.session_state"


@pytest.fixture(scope="module")
def table(mariadb, upstream_credentials, tls_files) -> Iterator[str]:
    c = direct(mariadb, upstream_credentials, tls_files)
    with c.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(20)) ENGINE=InnoDB")
    yield TABLE
    with c.cursor() as cur:
        cur.execute(f"DROP TABLE {TABLE}")
    c.close()


def _pymysql(port, user, password, tls_files, **kw):
    return pymysql.connect(host="127.0.0.1", port=port, user=user, password=password, ssl=client_ssl(tls_files), **kw)


def _connector(port, user, password, tls_files, **kw):
    return mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=password,
                                   ssl_ca=str(tls_files.ca_cert), use_pure=True, **kw)


def _both(proxy, mariadb, upstream_credentials, tls_files, factory):
    """(direct connection, proxied connection), each with the driver's default settings."""
    d = factory(mariadb.port, upstream_credentials.user, upstream_credentials.password, tls_files)
    p = factory(proxy.port, "admin", proxy.token("admin"), tls_files)
    return d, p


def _run(conn, table: str, tag: str) -> dict[str, object]:
    """Insert, roll back, count; what autocommit the session has; a savepoint round trip."""
    cur = conn.cursor()
    cur.execute(f"DELETE FROM {table} WHERE v = %s", (tag,))
    conn.commit()
    cur.execute(f"INSERT INTO {table} (v) VALUES (%s)", (tag,))
    conn.rollback()
    cur.execute(f"SELECT COUNT(*) FROM {table} WHERE v = %s", (tag,))
    after_rollback = cur.fetchone()[0]
    cur.execute("SELECT @@autocommit")
    autocommit = int(cur.fetchone()[0])
    savepoint = "ok"
    try:
        cur.execute("SAVEPOINT sp1")
        cur.execute(f"INSERT INTO {table} (v) VALUES (%s)", (tag,))
        cur.execute("ROLLBACK TO SAVEPOINT sp1")
        cur.execute("RELEASE SAVEPOINT sp1")
    except Exception as e:  # noqa: BLE001 - compared between the two sides
        savepoint = f"error {e.args[0]}"
    conn.rollback()
    cur.execute(f"SELECT COUNT(*) FROM {table} WHERE v = %s", (tag,))
    after_savepoint = cur.fetchone()[0]
    cur.close()
    return {"after_rollback": after_rollback, "autocommit": autocommit, "savepoint": savepoint,
            "after_savepoint": after_savepoint}


@pytest.mark.parametrize("factory", [_pymysql, _connector], ids=["pymysql", "mysql-connector"])
def test_rollback_at_driver_defaults_rolls_back(proxy, mariadb, upstream_credentials, tls_files, table, factory):
    d, p = _both(proxy, mariadb, upstream_credentials, tls_files, factory)
    try:
        direct_result = _run(d, table, "direct")
        proxied = _run(p, table, "proxied")
    finally:
        d.close()
        p.close()
    assert direct_result == {"after_rollback": 0, "autocommit": 0, "savepoint": "ok", "after_savepoint": 0}
    assert proxied == direct_result


def test_cli_transaction_rolls_back(proxy, tls_files, table):
    """The mariadb CLI (autocommit on): BEGIN … ROLLBACK leaves nothing."""
    import subprocess

    args = ["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{proxy.port}", "-uadmin",
            f"--password={proxy.token('admin')}", f"--ssl-ca={tls_files.ca_cert}", "--ssl-verify-server-cert",
            "--batch", "--skip-column-names"]
    sql = (f"DELETE FROM {table} WHERE v='cli'; BEGIN; INSERT INTO {table} (v) VALUES ('cli'); "
           f"SELECT @@in_transaction; ROLLBACK; SELECT COUNT(*) FROM {table} WHERE v='cli'")
    res = subprocess.run([*args, "-e", sql], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1", "0"]


def _greeting_fields(payload: bytes) -> tuple[int, int]:
    """(collation id, status flags) of a protocol-10 greeting."""
    end = payload.index(b"\x00", 1)
    pos = end + 1 + 4 + 8 + 1 + 2
    return payload[pos], struct.unpack_from("<H", payload, pos + 1)[0]


def test_greeting_mirrors_the_upstream(proxy, mariadb):
    direct_greeting = RawClient(mariadb.port)
    proxied = RawClient(proxy.port)
    try:
        d = _greeting_fields(direct_greeting.handshake)
        p = _greeting_fields(proxied.handshake)
    finally:
        direct_greeting.close()
        proxied.close()
    assert d[1] & 0x0002  # MariaDB: autocommit on
    assert p == d


def test_ok_after_login_and_reset_says_autocommit(proxy, tls_files):
    """The OK after login and after COM_RESET_CONNECTION are the proxy's own: their status is the
    upstream session's (autocommit, and in transaction only when it is)."""
    c = _pymysql(proxy.port, "admin", proxy.token("admin"), tls_files, autocommit=True)
    try:
        assert c.server_status & 0x0002
        assert c.get_autocommit() is True
        c.begin()
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        assert c.server_status & 0x0001
        c._execute_command(0x1F, b"")  # COM_RESET_CONNECTION: rolls back
        ok = c._read_packet()
        assert ok.is_ok_packet()
        status = struct.unpack_from("<H", ok.get_all_data(), 3)[0]
        assert status & 0x0002 and not status & 0x0001
    finally:
        c.close()


def test_compression_asked_for_but_not_offered_is_refused_not_hung(proxy, tls_files):
    """mysql-connector-python (pure) with compress=True sets CLIENT_COMPRESS though the proxy does
    not offer it; both sides used to wait forever (300 s seen). Now: a clear error at login."""
    import time

    started = time.monotonic()
    with pytest.raises(mysql.connector.Error) as e:
        _connector(proxy.port, "admin", proxy.token("admin"), tls_files, compress=True, connection_timeout=20)
    assert time.monotonic() - started < 10
    assert e.value.errno == 1235 and "compressed protocol" in e.value.msg
    assert any(ev.get("reason_code") == "compression_unsupported" for ev in proxy.events
               if ev["type"] == "session.rejected")


def test_connector_j_rollback_and_savepoints(proxy, mariadb, upstream_credentials, tls_files, table, tmp_path):
    """MariaDB Connector/J sends SET autocommit=0 for setAutoCommit(false) only if the server
    status says autocommit is on: the same answers directly and through jitproxy."""
    import shutil
    import subprocess
    from pathlib import Path

    driver = Path("/usr/share/java/mariadb-java-client.jar")
    source = Path(__file__).with_name("jdbc") / "Txn.java"
    assert shutil.which("javac") and driver.exists(), "scripts/setup.sh installs a JDK and libmariadb-java"
    subprocess.run(["javac", "-d", str(tmp_path), "-cp", str(driver), str(source)], check=True, timeout=120)

    def run(port: int, user: str, password: str, marker: str) -> dict[str, str]:
        url = f"jdbc:mariadb://127.0.0.1:{port}/hr_test?useSsl=true&serverSslCert={tls_files.ca_cert}"
        res = subprocess.run(["java", "-cp", f"{driver}:{tmp_path}", "Txn", url, user, password, table, marker],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    direct_result = run(mariadb.port, upstream_credentials.user, upstream_credentials.password, "jdbc-direct")
    proxied = run(proxy.port, "admin", proxy.token("admin"), "jdbc-proxied")
    assert direct_result == {"autocommit_at_start": "true", "after_rollback": "0", "autocommit": "0",
                             "after_savepoint": "0"}
    assert proxied == direct_result


def test_sequence_functions_are_refused_on_an_upstream_that_is_not_mariadb(proxy, tls_files):
    """On MySQL, NEXTVAL(s) would call a stored function named nextval (with its definer's
    rights): refused unless the upstream is MariaDB, on the fast path and the command loop."""
    pool = proxy.ctx.pool
    real = pool.server_version
    c = _pymysql(proxy.port, "admin", proxy.token("admin"), tls_files, autocommit=True)
    try:
        pool.server_version = "8.0.36"  # as Aurora MySQL's greeting says
        with c.cursor() as cur:
            for sql in ("SELECT NEXTVAL(hr_test.no_such_seq)", "SELECT NEXT VALUE FOR hr_test.no_such_seq"):
                with pytest.raises(pymysql.MySQLError) as e:
                    cur.execute(sql)
                assert e.value.args[0] == 1142 and "not MariaDB" in e.value.args[1], e.value.args
    finally:
        pool.server_version = real
        c.close()
    with _pymysql(proxy.port, "admin", proxy.token("admin"), tls_files, autocommit=True) as c2, c2.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as e:  # MariaDB again: decided, then the server answers
            cur.execute("SELECT NEXTVAL(hr_test.no_such_seq)")
        assert e.value.args[0] != 1142

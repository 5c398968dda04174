"""The session MariaDB fixture is a real, TLS-enabled server with the sample data loaded."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pymysql
import pytest

from jitproxy_demo.certs import client_ssl_context, make_ca_and_server_cert
from jitproxy_demo.mariadb import Credentials, LocalMariaDB

ER_TABLEACCESS_DENIED_ERROR = 1142
ER_ACCESS_DENIED_ERROR = 1045
CR_CONN_HOST_ERROR = 2003


def connect(db: LocalMariaDB, creds: Credentials, **kwargs: Any) -> pymysql.Connection:
    return pymysql.connect(
        host=db.host,
        port=db.port,
        user=creds.user,
        password=creds.password,
        connect_timeout=5,
        autocommit=True,
        **kwargs,
    )


def query(conn: pymysql.Connection, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


@pytest.mark.parametrize(
    ("table", "rows"),
    [
        ("hr_prod.employee", 300),
        ("hr_prod.title", 400),
        ("hr_prod.salary", 600),
        ("hr_test.employee", 50),
    ],
)
def test_sample_data_row_counts(mariadb: LocalMariaDB, table: str, rows: int) -> None:
    assert mariadb.execute_root(f"SELECT COUNT(*) FROM {table}") == [(rows,)]


def test_sample_data_has_one_canary_and_the_awkward_types(mariadb: LocalMariaDB) -> None:
    assert mariadb.execute_root(
        "SELECT employee_id FROM hr_prod.salary WHERE note = 'CANARY-SALARY-7f3a'"
    ) == [(42,)]
    ((nulls, badges, zoe),) = mariadb.execute_root(
        "SELECT SUM(manager_id IS NULL), SUM(LENGTH(badge) = 16), SUM(first_name = 'Zoë')"
        " FROM hr_prod.employee"
    )
    assert nulls == 6 and badges > 0 and zoe > 0


def test_tls_is_on_and_verifies_against_the_ca(
    mariadb: LocalMariaDB, tls_files: Any, upstream_credentials: Credentials
) -> None:
    context = client_ssl_context(tls_files.ca_cert)  # also checks the name 127.0.0.1
    with connect(mariadb, upstream_credentials, ssl=context) as conn:
        ((_, cipher),) = query(conn, "SHOW STATUS LIKE 'Ssl_cipher'")
    assert cipher


def test_tls_with_a_foreign_ca_is_refused(
    mariadb: LocalMariaDB, upstream_credentials: Credentials, tmp_path: Path
) -> None:
    foreign = make_ca_and_server_cert(tmp_path)
    with pytest.raises(pymysql.err.OperationalError):
        connect(mariadb, upstream_credentials, ssl=client_ssl_context(foreign.ca_cert))


def test_upstream_user_reads_sample_databases_but_not_mysql(
    mariadb: LocalMariaDB, upstream_credentials: Credentials
) -> None:
    with connect(mariadb, upstream_credentials) as conn:
        assert query(conn, "SELECT COUNT(*) FROM hr_prod.employee") == [(300,)]
        assert query(conn, "SELECT COUNT(*) FROM hr_test.employee") == [(50,)]
        with pytest.raises(pymysql.err.OperationalError) as denied:
            query(conn, "SELECT User FROM mysql.user")
    assert denied.value.args[0] == ER_TABLEACCESS_DENIED_ERROR


def test_no_anonymous_accounts_and_root_needs_its_password(mariadb: LocalMariaDB) -> None:
    assert mariadb.execute_root("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ''") == [(0,)]
    with pytest.raises(pymysql.err.OperationalError) as denied:
        connect(mariadb, Credentials("root", ""))
    assert denied.value.args[0] == ER_ACCESS_DENIED_ERROR
    with connect(mariadb, mariadb.root) as conn:
        assert query(conn, "SELECT CURRENT_USER()") == [("root@127.0.0.1",)]


def test_general_log_records_statements_but_not_passwords(
    mariadb: LocalMariaDB, upstream_credentials: Credentials
) -> None:
    marker = f"marker-{uuid.uuid4()}"
    with connect(mariadb, upstream_credentials) as conn:
        query(conn, f"SELECT '{marker}'")
    log = mariadb.general_log_text()
    assert marker in log
    assert upstream_credentials.password not in log
    assert mariadb.root.password not in log


def test_stop_is_idempotent_and_restart_keeps_data(tmp_path: Path) -> None:
    db = LocalMariaDB(tmp_path / "db")
    with db:
        db.execute_root("CREATE DATABASE kept")
        port = db.port
    assert not db.running
    db.stop()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(db, db.root)
    assert refused.value.args[0] == CR_CONN_HOST_ERROR

    db.start()
    try:
        assert db.port == port
        assert ("kept",) in db.execute_root("SHOW DATABASES")
    finally:
        db.stop()
        db.stop()
    assert not db.running

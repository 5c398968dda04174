"""Column-level grants through the real proxy: listed columns work, an unlisted column in any
clause is refused before it reaches MariaDB (blind inference), SELECT * asks for named columns."""

from __future__ import annotations

import pymysql
import pytest

from tests.integration.conftest import client_ssl


@pytest.fixture
def columnar(proxy, policies_dir):
    (policies_dir / "columns.yaml").write_text(
        "grants:\n"
        "  - {subject: user:colgrant, grant: hr_prod.salary, privileges: [SELECT], columns: [employee_id, FROM_DATE]}\n"
        "  - {subject: user:colgrant, grant: hr_prod.title, privileges: [SELECT]}\n"
        "  - {subject: user:colgrant, grant: hr_test.employee, privileges: [SELECT, UPDATE], columns: [id, dept]}\n"
    )
    proxy.ctx.grants.reload()
    yield proxy
    (policies_dir / "columns.yaml").unlink()
    proxy.ctx.grants.reload()


def _connect(p, tls_files, db="hr_prod"):
    return pymysql.connect(host="127.0.0.1", port=p.port, user="colgrant", password=p.token("colgrant"),
                           database=db, ssl=client_ssl(tls_files), autocommit=True)


def _refused(cur, sql: str) -> str:
    with pytest.raises(pymysql.MySQLError) as e:
        cur.execute(sql)
    assert e.value.args[0] == 1142, e.value.args
    return e.value.args[1]


def test_granted_columns_are_readable_and_others_refused_in_every_clause(columnar, tls_files, mariadb):
    c = _connect(columnar, tls_files)
    with c.cursor() as cur:
        assert cur.execute("SELECT employee_id, from_date FROM salary WHERE employee_id = 1") >= 1
        assert cur.execute("SELECT COUNT(*) FROM salary") == 1
        assert cur.execute("SELECT s.employee_id FROM salary s JOIN title t ON t.employee_id = s.employee_id "
                           "ORDER BY s.from_date LIMIT 3") == 3
        assert "hr_prod.salary.amount" in _refused(cur, "SELECT amount FROM salary /*col-1*/")
        for n, sql in enumerate((
            "SELECT employee_id FROM salary WHERE amount > 100000",
            "SELECT employee_id FROM salary ORDER BY amount DESC LIMIT 1",
            "SELECT employee_id FROM salary GROUP BY employee_id HAVING MAX(amount) > 100000",
            "SELECT t.title FROM title t JOIN salary s ON s.employee_id = t.employee_id AND s.amount > 100000",
            "SELECT x FROM (SELECT amount AS x FROM salary) d",
        ), start=2):
            assert "amount" in _refused(cur, f"{sql} /*col-{n}*/")
    c.close()
    log = mariadb.general_log_text()
    assert not any(f"col-{n}*/" in log for n in range(1, 7))


def test_select_star_over_a_column_grant_asks_for_named_columns(columnar, tls_files):
    c = _connect(columnar, tls_files)
    with c.cursor() as cur:
        assert "name the columns" in _refused(cur, "SELECT * FROM salary")
        assert "name the columns" in _refused(cur, "TABLE salary")
        assert cur.execute("SELECT * FROM title LIMIT 2") == 2  # a table-level grant: unchanged
    c.close()


def test_update_of_an_unlisted_column_is_refused(columnar, tls_files):
    c = _connect(columnar, tls_files, db="hr_test")
    with c.cursor() as cur:
        assert cur.execute("UPDATE employee SET dept = dept WHERE id = 1") in (0, 1)
        assert "hr_test.employee.email" in _refused(cur, "UPDATE employee SET email = 'x@example.com' WHERE id = 1")
        assert "hr_test.employee.email" in _refused(cur, "UPDATE employee SET dept = email WHERE id = 1")
    c.close()


def test_star_expands_through_the_upstream_schema(proxy, policies_dir, tls_files, mariadb):
    """`*` reads every real column: allowed when all are granted, refused again as soon as a
    column is added (the schema cache is cleared by DDL through the proxy)."""
    mariadb.execute_root("CREATE TABLE IF NOT EXISTS hr_test.narrow (id INT PRIMARY KEY, label VARCHAR(20))")
    mariadb.execute_root("INSERT IGNORE INTO hr_test.narrow VALUES (1, 'one')")
    (policies_dir / "star.yaml").write_text(
        "grants:\n"
        "  - {subject: user:star, grant: hr_test.narrow, privileges: [SELECT], columns: [id, label]}\n"
        "  - {subject: user:admin2, grant: hr_test.narrow, privileges: [SELECT, ALTER]}\n"
    )
    proxy.ctx.grants.reload()
    try:
        # autocommit: at PyMySQL's default a SELECT opens a transaction whose metadata lock
        # would make the ALTER below wait (as it would directly)
        star = pymysql.connect(host="127.0.0.1", port=proxy.port, user="star", password=proxy.token("star"),
                               database="hr_test", ssl=client_ssl(tls_files), autocommit=True)
        with star.cursor() as cur:
            cur.execute("SELECT * FROM narrow")
            assert cur.fetchall() == ((1, "one"),)
        admin = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin2", password=proxy.token("admin2"),
                                database="hr_test", ssl=client_ssl(tls_files))
        with admin.cursor() as cur:
            cur.execute("ALTER TABLE narrow ADD COLUMN secret VARCHAR(20) DEFAULT 'CANARY-NARROW'")
        admin.close()
        with star.cursor() as cur:
            message = _refused(cur, "SELECT * FROM narrow")
            assert "narrow.secret" in message
            cur.execute("SELECT id, label FROM narrow")
            assert cur.fetchall() == ((1, "one"),)
        star.close()
    finally:
        (policies_dir / "star.yaml").unlink()
        proxy.ctx.grants.reload()
        mariadb.execute_root("DROP TABLE IF EXISTS hr_test.narrow")


def test_definitions_of_a_table_granted_by_column_are_not_shown(columnar, tls_files):
    """Found by the differential run: SHOW CREATE TABLE through a column grant would have shown
    every column (the proxy's shared account sees them all); MariaDB refuses it too. DESCRIBE
    and SHOW COLUMNS list the granted columns only, as MariaDB does."""
    c = _connect(columnar, tls_files)
    with c.cursor() as cur:
        for sql in ("SHOW CREATE TABLE salary", "SHOW INDEX FROM salary"):
            assert "hr_prod.salary" in _refused(cur, sql)  # a grant on the whole table is needed
        for sql in ("DESCRIBE salary", "SHOW FULL COLUMNS FROM salary", "EXPLAIN salary", "DESC hr_prod.salary",
                    "SHOW COLUMNS FROM salary LIKE '%'", "DESCRIBE salary amount"):
            cur.execute(sql)
            rows = cur.fetchall()
            assert {r[0] for r in rows} <= {"employee_id", "from_date"}, (sql, rows)
            assert len(rows) == (0 if sql.endswith("amount") else 2), (sql, rows)
        assert "cannot be prepared" in _refused(cur, "PREPARE d FROM 'DESCRIBE salary'")
        cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_NAME = 'salary'")
        assert cur.fetchall() == ()
        cur.execute("SHOW TABLES")
        assert "salary" in {r[0] for r in cur.fetchall()}  # the name itself is visible
        cur.execute("SHOW CREATE TABLE title")  # granted whole: fine
    c.close()


def test_binary_prepared_describe_of_a_column_granted_table_is_refused(columnar, tls_files):
    """Binary-protocol rows are relayed, not filtered: the column listing must go as a query."""
    import mysql.connector

    conn = mysql.connector.connect(host="127.0.0.1", port=columnar.port, user="colgrant",
                                   password=columnar.token("colgrant"), database="hr_prod",
                                   ssl_ca=str(tls_files.ca_cert), use_pure=True)
    cur = conn.cursor(prepared=True)
    with pytest.raises(mysql.connector.Error) as e:
        cur.execute("SHOW COLUMNS FROM salary")
    assert e.value.errno == 1142 and "send it as a plain query" in e.value.msg
    conn.close()

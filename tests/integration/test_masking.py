"""Column masks through the real proxy and MariaDB: masked columns come back masked through every
client, `*` included; a masked column anywhere its value could be inferred is refused before
MariaDB sees the statement; a mask added after PREPARE stops the prepared statement."""

from __future__ import annotations

import hashlib

import mysql.connector
import pymysql
import pytest

from tests.integration.conftest import client_ssl

SALT = "test-salt-7f3a"


@pytest.fixture
def masked(proxy, policies_dir):
    (policies_dir / "masks.yaml").write_text(
        "grants:\n"
        "  - {subject: user:contractor, grant: hr_prod.employee, privileges: [SELECT]}\n"
        "  - {subject: user:contractor, grant: hr_prod.salary, privileges: [SELECT]}\n"
        "  - {subject: user:contractor, grant: hr_prod.title, privileges: [SELECT]}\n"
        "masks:\n"
        "  - subject: user:contractor\n"
        "    table: hr_prod.employee\n"
        "    columns: {email: partial, last_name: hash, badge: redact}\n"
        "  - subject: user:contractor\n"
        "    table: hr_prod.salary\n"
        "    columns: {amount: redact}\n"
    )
    proxy.ctx.grants.reload()
    masker_before = proxy.ctx.masker
    from proxy.authz.masking import Masker

    proxy.ctx.masker = Masker(SALT)
    yield proxy
    proxy.ctx.masker = masker_before
    (policies_dir / "masks.yaml").unlink()
    proxy.ctx.grants.reload()


def _connect(p, tls_files, user="contractor"):
    return pymysql.connect(host="127.0.0.1", port=p.port, user=user, password=p.token(user),
                           database="hr_prod", ssl=client_ssl(tls_files), autocommit=True)


def _truth(mariadb, sql):
    return mariadb.execute_root(sql)


def _partial(value: str) -> str:
    keep = min(4, len(value) // 2)
    return "*" * (len(value) - keep) + value[len(value) - keep:]


def test_masked_columns_come_back_masked(masked, tls_files, mariadb):
    truth = {r[0]: r for r in _truth(mariadb, "SELECT id, first_name, last_name, email FROM hr_prod.employee WHERE id <= 3")}
    c = _connect(masked, tls_files)
    with c.cursor() as cur:
        cur.execute("SELECT id, first_name, last_name, email, badge FROM employee WHERE id <= 3 ORDER BY id")
        assert [d[0] for d in cur.description] == ["id", "first_name", "last_name", "email", "badge"]
        for id_, first, last, email, badge in cur.fetchall():
            _, real_first, real_last, real_email = truth[id_]
            assert first == real_first  # not masked
            assert last == hashlib.sha256((SALT + real_last).encode()).hexdigest()
            assert email == _partial(real_email) and email != real_email
            assert badge == "****"
        cur.execute("SELECT e.email AS contact FROM employee e WHERE e.id = 1")
        assert cur.description[0][0] == "contact" and cur.fetchone()[0] == _partial(truth[1][3])
        cur.execute("SELECT employee_id, amount FROM salary WHERE employee_id = 1 LIMIT 1")
        assert cur.fetchone()[1] == "****"
    c.close()


def test_star_is_expanded_with_masks(masked, tls_files, mariadb):
    columns = [r[0] for r in _truth(mariadb, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE "
                                    "TABLE_SCHEMA = 'hr_prod' AND TABLE_NAME = 'employee' ORDER BY ORDINAL_POSITION")]
    c = _connect(masked, tls_files)
    with c.cursor() as cur:
        cur.execute("SELECT * FROM employee WHERE id = 2")
        assert [d[0] for d in cur.description] == columns
        row = dict(zip(columns, cur.fetchone()))
        assert row["badge"] == "****" and "@" not in row["email"][:-4]
        cur.execute("SELECT t.*, e.* FROM title t JOIN employee e ON e.id = t.employee_id WHERE e.id = 2 LIMIT 1")
        names = [d[0] for d in cur.description]
        assert names[-len(columns):] == columns and "title" in names
    c.close()


def test_inference_through_a_masked_column_is_refused_before_mariadb(masked, tls_files, mariadb):
    c = _connect(masked, tls_files)
    with c.cursor() as cur:
        for n, sql in enumerate((
            "SELECT id FROM employee WHERE email LIKE 'a%'",
            "SELECT id FROM employee ORDER BY last_name LIMIT 1",
            "SELECT LEFT(email, 3) FROM employee",
            "SELECT COUNT(*) FROM salary WHERE amount > 100000",
            "SELECT x FROM (SELECT amount AS x FROM salary) d",
            "SELECT id FROM employee GROUP BY badge",
            "SELECT e.id FROM employee e JOIN salary s ON s.amount = e.id",
            "SELECT (SELECT MAX(amount) FROM salary)",
            "SELECT email FROM employee UNION SELECT 'x'",
            "SELECT * FROM employee NATURAL JOIN title",
            "SELECT `émail` FROM employee",
            "SELECT email, (SELECT COUNT(*) FROM information_schema.TABLES) AS n FROM employee",
        )):
            with pytest.raises(pymysql.MySQLError) as e:
                cur.execute(f"{sql} /*mask-{n}*/")
            assert e.value.args[0] == 1142 and "masked_column" in e.value.args[1], (sql, e.value.args)
        with pytest.raises(pymysql.MySQLError) as e:  # a PREPARE text is not rewritten: refused
            cur.execute("PREPARE s FROM 'SELECT email FROM employee /*mask-prepare*/'")
        assert "masked_column" in e.value.args[1]
    c.close()
    log = mariadb.general_log_text()
    assert "mask-" not in log


def test_unmasked_subjects_and_statements_are_unchanged(masked, tls_files, mariadb):
    real = _truth(mariadb, "SELECT email FROM hr_prod.employee WHERE id = 1")[0][0]
    c = _connect(masked, tls_files)
    with c.cursor() as cur:
        cur.execute("SELECT id, first_name FROM employee WHERE dept = 'sales' ORDER BY id LIMIT 2")
        assert len(cur.fetchall()) == 2
    c.close()
    other = _connect(masked, tls_files, user="dev")
    with other.cursor() as cur:
        cur.execute("SELECT email FROM employee WHERE id = 1")
        assert cur.fetchone()[0] == real
    other.close()


def test_binary_protocol_masks_and_a_mask_added_after_prepare_stops_execute(masked, tls_files, mariadb, policies_dir):
    conn = mysql.connector.connect(host="127.0.0.1", port=masked.port, user="contractor",
                                   password=masked.token("contractor"), database="hr_prod",
                                   ssl_ca=str(tls_files.ca_cert), use_pure=True, autocommit=True)
    real = _truth(mariadb, "SELECT email, first_name FROM hr_prod.employee WHERE id = 4")[0]
    cur = conn.cursor(prepared=True)
    cur.execute("SELECT email, first_name FROM employee WHERE id = ?", (4,))
    assert [tuple(r) for r in cur.fetchall()] == [(_partial(real[0]), real[1])]
    text = (policies_dir / "masks.yaml").read_text()
    (policies_dir / "masks.yaml").write_text(text.replace("{email: partial,", "{email: partial, first_name: redact,"))
    masked.ctx.grants.reload()
    with pytest.raises(mysql.connector.Error) as e:
        cur.execute("SELECT email, first_name FROM employee WHERE id = ?", (4,))  # same statement: re-executed
    assert e.value.errno == 1142 and "prepare it again" in e.value.msg
    cur.close()
    fresh = conn.cursor(prepared=True)
    fresh.execute("SELECT email, first_name FROM employee WHERE id = ?", (4,))
    assert [tuple(r) for r in fresh.fetchall()] == [(_partial(real[0]), "****")]
    fresh.close()
    conn.close()


def test_masked_reads_are_audited(masked, tls_files):
    c = _connect(masked, tls_files)
    with c.cursor() as cur:
        cur.execute("SELECT email FROM employee WHERE id = 5 /*audit-mask*/")
        cur.execute("SELECT 1")  # one more round trip: the session audits a statement before reading the next
    c.close()
    event = next((e for e in reversed(masked.events) if "audit-mask" in (e.get("statement") or "")), None)
    assert event is not None, [(e["type"], e.get("statement"), e.get("user")) for e in masked.events[-4:]]
    assert event["decision"] == "allow"
    assert event["masked_columns"] == ["hr_prod.employee.badge:redact", "hr_prod.employee.email:partial",
                                       "hr_prod.employee.last_name:hash"]


def test_execute_of_a_statement_prepared_before_its_column_was_masked_is_refused(masked, tls_files, policies_dir):
    """PREPARE ... FROM text is never rewritten: once a mask covers what it reads, EXECUTE stops."""
    c = _connect(masked, tls_files)
    with c.cursor() as cur:
        cur.execute("PREPARE s FROM 'SELECT first_name FROM employee WHERE id = 1'")
        cur.execute("EXECUTE s")
        assert cur.fetchone()[0] != "****"
        text = (policies_dir / "masks.yaml").read_text()
        (policies_dir / "masks.yaml").write_text(text.replace("{email: partial,", "{email: partial, first_name: redact,"))
        masked.ctx.grants.reload()
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("EXECUTE s")
        assert e.value.args[0] == 1142 and "masked_column" in e.value.args[1]
    c.close()

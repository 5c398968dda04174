"""SQL-level PREPARE / EXECUTE / DEALLOCATE: a literal text is authorized as that statement, and
every EXECUTE is decided again against the grants in effect."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pymysql
import pytest

from tests.integration.conftest import client_ssl


def connect(proxy, tls_files, user="dev"):
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user=user, password=proxy.token(user),
                           database="hr_prod", ssl=client_ssl(tls_files))


def test_prepare_execute_deallocate(proxy, tls_files):
    c = connect(proxy, tls_files)
    with c.cursor() as cur:
        cur.execute("PREPARE s FROM 'SELECT first_name FROM employee WHERE id = ?'")
        cur.execute("SET @id = 3")
        cur.execute("EXECUTE s USING @id")
        assert len(cur.fetchall()) == 1
        cur.execute("DEALLOCATE PREPARE s")
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("EXECUTE s USING @id")
        assert e.value.args[0] == 1142 and "unknown_prepared" in e.value.args[1]
    c.close()


@pytest.mark.parametrize("sql", [
    "PREPARE s FROM 'SELECT * FROM salary'",
    "PREPARE s FROM @text",
    "PREPARE s FROM CONCAT('SELECT * FROM ', 'salary')",
    "EXECUTE IMMEDIATE 'SELECT * FROM salary'",
])
def test_prepare_of_what_cannot_be_authorized_is_denied(proxy, tls_files, mariadb, sql):
    marker = uuid.uuid4().hex
    c = connect(proxy, tls_files)
    with c.cursor() as cur, pytest.raises(pymysql.MySQLError) as e:
        cur.execute(f"{sql} /* {marker} */")
    assert e.value.args[0] == 1142
    c.close()
    assert marker not in mariadb.general_log_text()


def test_execute_is_decided_again_after_the_grant_ends(proxy, tls_files, policies_dir, monkeypatch):
    # the clock moves past the grant's end, and so past the token's: the session must outlive it
    monkeypatch.setattr(proxy.ctx, "on_token_expiry", "allow_until_idle")
    (policies_dir / "sqlprep.yaml").write_text(
        "grants:\n  - {subject: user:sqlprep, grant: hr_prod.title, privileges: [SELECT], expires_at: 2099-01-01T00:00:00Z}\n")
    proxy.ctx.grants.reload()
    try:
        c = connect(proxy, tls_files, "sqlprep")
        with c.cursor() as cur:
            cur.execute("PREPARE t FROM 'SELECT COUNT(*) FROM title'")
            cur.execute("EXECUTE t")
            assert cur.fetchone()[0] > 0
            proxy.clock.advance(timedelta(days=365 * 80))
            with pytest.raises(pymysql.MySQLError) as e:
                cur.execute("EXECUTE t")
            assert e.value.args[0] == 1142
        c.close()
    finally:
        proxy.clock.offset = timedelta(0)
        (policies_dir / "sqlprep.yaml").unlink()
        proxy.ctx.grants.reload()


def test_a_failed_prepare_forgets_the_old_statement(proxy, tls_files):
    c = connect(proxy, tls_files)
    with c.cursor() as cur:
        cur.execute("PREPARE s FROM 'SELECT id FROM employee LIMIT 1'")
        with pytest.raises(pymysql.MySQLError):
            cur.execute("PREPARE s FROM 'SELECT nope FROM employee'")  # fails upstream
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("EXECUTE s")
        assert e.value.args[0] == 1142 and "unknown_prepared" in e.value.args[1]
    c.close()

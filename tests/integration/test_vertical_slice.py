"""Issue 2's acceptance, through real clients: exact results, fail-closed denials that never reach
MariaDB (its general log proves it), grant expiry inside an open session, admin writes, and one
audit event per statement naming the person."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pymysql
import pytest

from tests.integration.conftest import DbError, client_ssl, direct


def marker() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


def test_dev_reads_granted_tables_with_results_identical_to_direct(proxy, mariadb, upstream_credentials, tls_files):
    sql = "SELECT * FROM employee ORDER BY id"
    via = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                          database="hr_prod", ssl=client_ssl(tls_files))
    ref = direct(mariadb, upstream_credentials, tls_files, "hr_prod")
    for table in ("employee", "title"):
        q = f"SELECT * FROM {table} ORDER BY 1, 2"
        with via.cursor() as a, ref.cursor() as b:
            a.execute(q)
            b.execute(q)
            assert a.description == b.description  # names, types, lengths, precision, scale, nullability
            rows = a.fetchall()
            assert rows == b.fetchall() and len(rows) > 0
    # Raw column definitions (org_table, flags, charset) are relayed byte for byte.
    with via.cursor() as a, ref.cursor() as b:
        a.execute(sql)
        b.execute(sql)
        fa = [(f.db, f.table_name, f.org_table, f.name, f.org_name, f.charsetnr, f.length, f.type_code, f.flags, f.scale)
              for f in a._result.fields]
        fb = [(f.db, f.table_name, f.org_table, f.name, f.org_name, f.charsetnr, f.length, f.type_code, f.flags, f.scale)
              for f in b._result.fields]
        assert fa == fb
    via.close()
    ref.close()


def test_dev_select_works_with_every_client(connect):
    c = connect("dev", "hr_prod")
    cols, rows = c.query("SELECT id, first_name FROM employee WHERE id <= 3 ORDER BY id")
    assert cols == ["id", "first_name"] and len(rows) == 3


DENIED = [
    ("SELECT * FROM salary /*{m}*/", 1142, "salary"),
    ("SELECT * FROM hr_prod.salary /*{m}*/", 1142, "salary"),
    ("SELECT e.id FROM employee e JOIN salary s ON s.employee_id = e.id /*{m}*/", 1142, "salary"),
    ("SELECT * FROM employee WHERE id IN (SELECT employee_id FROM salary) /*{m}*/", 1142, "salary"),
    ("WITH employee AS (SELECT * FROM salary) SELECT * FROM employee /*{m}*/", 1142, "salary"),
    ("SELECT * FROM hr_test.employee /*{m}*/", 1142, "hr_test"),
    ("SELECT first_name FROM employee /*!50000 UNION SELECT note FROM salary */ /*{m}*/", 1142, "executable_comment"),
    ("SELECT 1 /*M!100000 , (SELECT COUNT(*) FROM salary) */ /*{m}*/", 1142, "executable_comment"),
    ("SELECT 1; SELECT * FROM salary /*{m}*/", 1142, "multiple_statements|salary"),  # the CLI splits batches itself
    ("INSERT INTO employee (first_name) VALUES ('x') /*{m}*/", 1142, "INSERT"),
    ("UPDATE employee SET first_name = 'x' /*{m}*/", 1142, "UPDATE"),
    ("DELETE FROM title /*{m}*/", 1142, "DELETE"),
    ("DROP TABLE title /*{m}*/", 1142, "DROP"),
    ("TABLE salary /*{m}*/", 1142, "salary"),
    ("SELECT * FROM information_schema.processlist /*{m}*/", 1142, "metadata"),
    ("SELECT * FROM information_schema.user_privileges /*{m}*/", 1142, "metadata"),
    ("SELECT * FROM mysql.user /*{m}*/", 1142, "mysql"),
    ("CALL hr_prod.anything() /*{m}*/", 1142, "EXECUTE command denied|cannot be prepared"),
    ("SET sql_mode = 'ANSI_QUOTES' /*{m}*/", 1142, "system_variable|cannot be prepared"),
    ("SET @x = (SELECT amount FROM salary LIMIT 1) /*{m}*/", 1142, "salary|cannot be prepared"),
    ("SELECT amount INTO @v FROM salary LIMIT 1 /*{m}*/", 1142, ""),
    ("SELECT LOAD_FILE('/etc/passwd') /*{m}*/", 1142, "function"),
    ("USE hr_test /*{m}*/", 1044, "hr_test"),
    ("SHOW CREATE TABLE salary /*{m}*/", 1142, "salary"),
    ("DESCRIBE salary /*{m}*/", 1142, "salary"),
]


@pytest.mark.parametrize("template,code,needle", DENIED, ids=[d[0][:48] for d in DENIED])
def test_denied_statements_never_reach_mariadb(connect, client_class, mariadb, template, code, needle):
    if client_class.name == "connector-prepared" and template.startswith(("USE", "SHOW", "DESCRIBE")):
        pytest.skip("not a preparable statement in MariaDB itself")
    c = connect("dev", "hr_prod")
    m = marker()
    with pytest.raises(DbError) as e:
        c.query(template.format(m=m))
    assert e.value.code == code
    assert re.search(needle, e.value.message)
    assert "jitproxy" in e.value.message  # the person learns who refused and why
    assert m not in mariadb.general_log_text()


def test_allowed_statement_does_reach_mariadb(connect, mariadb):
    """The general-log check above can fail: an allowed statement's marker is there."""
    m = marker()
    connect("dev", "hr_prod").query(f"SELECT id FROM employee LIMIT 1 /*{m}*/")
    assert m in mariadb.general_log_text()


def test_deny_message_tells_how_to_get_access(connect):
    """This proxy declares no environment, so no request could give access (the demo's does:
    test_demo.py, test_jit_workflow.py): the message says why and who can, not a command that
    would be refused."""
    c = connect("dev", "hr_prod")
    with pytest.raises(DbError) as e:
        c.query("SELECT * FROM salary")
    assert "SELECT command denied to user 'dev' for table 'hr_prod.salary'" in e.value.message
    assert ("No request can give SELECT on hr_prod: hr_prod on default is in no environment, so no approval "
            "policy applies") in e.value.message
    assert "an admin can grant it (jitproxy grant add)" in e.value.message
    assert "jitproxy request create" not in e.value.message


def test_show_lists_only_granted_objects(proxy, tls_files):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                        database="hr_prod", ssl=client_ssl(tls_files))
    with c.cursor() as cur:
        cur.execute("SHOW TABLES")
        assert sorted(r[0] for r in cur.fetchall()) == ["employee", "title"]
        cur.execute("SHOW DATABASES")
        assert sorted(r[0] for r in cur.fetchall()) == ["hr_prod", "information_schema"]
        cur.execute("SHOW FULL TABLES FROM hr_prod")
        assert sorted(r[0] for r in cur.fetchall()) == ["employee", "title"]
    c.close()


def test_grant_expiry_bites_on_the_next_statement_of_an_open_session(proxy, policies_dir, connect, client_class, monkeypatch):
    # the clock moves past the grant's end, and so past the token's: the session must outlive it
    monkeypatch.setattr(proxy.ctx, "on_token_expiry", "allow_until_idle")
    if client_class.name == "mariadb-cli":
        pytest.skip("one CLI process per statement: no open session")
    (policies_dir / "temp.yaml").write_text(
        "grants:\n  - {subject: user:temp, grant: hr_prod.title, privileges: [SELECT], expires_at: 2099-01-01T00:00:00Z}\n"
    )
    proxy.ctx.grants.reload()
    c = connect("temp", "hr_prod")
    _, rows = c.query("SELECT COUNT(*) FROM title")
    assert int(rows[0][0]) > 0
    proxy.clock.advance(timedelta(days=365 * 80))
    try:
        with pytest.raises(DbError) as e:
            c.query("SELECT COUNT(*) FROM title")
        assert e.value.code == 1142
    finally:
        proxy.clock.offset = timedelta(0)
        (policies_dir / "temp.yaml").unlink()
        proxy.ctx.grants.reload()


def test_admin_insert_reports_affected_rows_and_last_insert_id(proxy, tls_files):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                        database="hr_test", ssl=client_ssl(tls_files), autocommit=True)
    with c.cursor() as cur:
        n = cur.execute("INSERT INTO employee (first_name, last_name, email, hired_on, dept, created_at) VALUES "
                        "('A','B',%s,'2020-01-01','x',NOW()), ('C','D',%s,'2020-01-01','x',NOW())",
                        (f"{marker()}@x", f"{marker()}@x"))
        assert n == 2
        first_id = cur.lastrowid
        cur.execute("SELECT MAX(id) FROM employee")
        assert cur.fetchone()[0] == first_id + 1
        cur.execute("DELETE FROM employee WHERE id >= %s", (first_id,))
        assert cur.rowcount == 2
    c.close()


def test_admin_rollback_leaves_nothing(proxy, tls_files, mariadb):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                        database="hr_test", ssl=client_ssl(tls_files), autocommit=True)
    email = f"{marker()}@rollback"
    with c.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO employee (first_name, last_name, email, hired_on, dept, created_at) VALUES ('R','B',%s,'2020-01-01','x',NOW())", (email,))
        cur.execute("SELECT COUNT(*) FROM employee WHERE email = %s", (email,))
        assert cur.fetchone()[0] == 1
        cur.execute("ROLLBACK")
        cur.execute("SELECT COUNT(*) FROM employee WHERE email = %s", (email,))
        assert cur.fetchone()[0] == 0
    c.close()
    assert mariadb.execute_root("SELECT COUNT(*) FROM hr_test.employee WHERE email = %s", (email,))[0][0] == 0


def test_upstream_error_keeps_code_and_sqlstate(proxy, tls_files):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                        database="hr_prod", ssl=client_ssl(tls_files))
    with c.cursor() as cur, pytest.raises(pymysql.err.ProgrammingError) as e:
        cur.execute("SELECT * FROM no_such_table")
    assert e.value.args[0] == 1146 and "doesn't exist" in e.value.args[1]
    c.close()


def test_session_state_is_the_upstream_sessions(proxy, tls_files):
    """SET, user variables, temporary state and USE behave as on a direct connection."""
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                        ssl=client_ssl(tls_files))
    with c.cursor() as cur:
        cur.execute("SET @who = 'me'")
        cur.execute("SET time_zone = '+05:00'")
        cur.execute("USE hr_test")
        cur.execute("SELECT @who, @@time_zone, DATABASE()")
        assert cur.fetchone() == ("me", "+05:00", "hr_test")
    c.close()


def test_every_statement_is_audited_naming_the_person(proxy, tls_files):
    """best_effort (this proxy's mode): one event per statement, when it ends, with the text,
    decision and result: `statement.completed` / `statement.failed`; denied: `statement.denied`.
    All name the person, groups and client program. (fail_closed: tests/integration/test_audit_trail.py)"""
    before = len(proxy.events)
    token = proxy.token("dev", ("oncall",))
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=token,
                        database="hr_prod", ssl=client_ssl(tls_files), program_name="audit-test")
    statements = [f"SELECT id FROM employee LIMIT 1 /*{marker()}*/", f"SELECT * FROM salary /*{marker()}*/",
                  f"SELECT no_such_column FROM employee /*{marker()}*/"]
    with c.cursor() as cur:
        for s in statements:
            try:
                cur.execute(s)
            except pymysql.MySQLError:
                pass
    c.close()
    proxy.call(_idle())
    events = proxy.events[before:]
    by_id = {}
    for e in events:
        if e.get("statement_id"):
            by_id.setdefault(e["statement_id"], []).append(e)
    for s in statements:
        mine = [e for e in events if e.get("statement") == s]
        assert len(mine) == 1, s
        assert mine[0]["user"] == "dev" and mine[0]["groups"] == ["oncall"]
        assert mine[0]["client_program"] == "audit-test"
    first, second, third = ([e for e in events if e.get("statement") == s][0] for s in statements)
    assert first["type"] == "statement.completed" and second["type"] == "statement.denied"
    assert third["type"] == "statement.failed"
    assert by_id[first["statement_id"]] == [first] and first["rows"] == 1 and first["decision"] == "allow"
    assert first["tables"] == ["hr_prod.employee"] and first["grants"]
    assert by_id[third["statement_id"]] == [third]
    assert third["error_code"] == 1054 and third["user"] == "dev"
    assert first["fingerprint"] != third["fingerprint"] and len(first["fingerprint"]) == 16
    assert any(e["type"] == "session.start" for e in events) and any(e["type"] == "session.end" for e in events)
    denied = next(e for e in events if e["type"] == "statement.denied")
    assert denied["reason_code"] == "missing_grant" and denied["tables"] == ["hr_prod.salary"]
    dump = repr(proxy.events)
    assert token not in dump and token.split(".")[2] not in dump


async def _idle() -> None:
    """Let the proxy's loop finish the closing session's bookkeeping."""
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0)


def test_upstream_errors_never_name_the_shared_database_account(proxy, tls_files, upstream_credentials):
    """admin may read mysql.user by policy, but the shared account may not: MariaDB's error names
    'jitproxy'@'127.0.0.1'; the person sees their own name instead."""
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                        ssl=client_ssl(tls_files))
    with c.cursor() as cur, pytest.raises(pymysql.MySQLError) as e:
        cur.execute("SELECT * FROM mysql.user")
    assert e.value.args[0] == 1142
    assert upstream_credentials.user not in e.value.args[1] and "'admin'" in e.value.args[1]
    with c.cursor() as cur:  # the session goes on
        cur.execute("SELECT 1")
    c.close()

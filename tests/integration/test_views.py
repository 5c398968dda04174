"""Views through the proxy against the real server: a view is read as what its definition reads
(a view in a database someone may read never shows them a table they may not), views are
created SQL SECURITY INVOKER with MySQL's privileges, and DDL through the proxy is seen by the
very next statement of every session."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from tests.integration.conftest import client_ssl

CANARY = "CANARY-SALARY-7f3a"  # only in hr_prod.salary (jitproxy_demo/sample_data.sql)
VIEWER_POLICY = """
grants:
  - {subject: user:viewer, grant: "hr_test.*", privileges: [SELECT]}
"""


@pytest.fixture()
def viewer_grants(proxy, policies_dir) -> Iterator[callable]:
    path = policies_dir / "views.yaml"

    def grant(extra: str = "") -> None:
        path.write_text(VIEWER_POLICY + extra)
        proxy.ctx.grants.reload()

    grant()
    yield grant
    path.unlink()
    proxy.ctx.grants.reload()


@pytest.fixture()
def clean_views(mariadb) -> Iterator[None]:
    yield
    for name in ("pay", "pay_invoker", "names", "late", "refused", "nested"):
        mariadb.execute_root(f"DROP VIEW IF EXISTS hr_test.{name}")


def made_elsewhere(proxy) -> None:
    """After views were made on the server directly: the proxy reads hr_test again when a
    statement names something it did not hold, at most once a second (tests/unit/
    test_view_catalog.py); not waiting here, the test clears what it read."""
    next(iter(proxy.ctx.instances.values())).views.invalidate()


def connect(proxy, tls_files, user: str) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user=user, password=proxy.token(user),
                           database="hr_test", ssl=client_ssl(tls_files), autocommit=True)


def denied(cur, sql: str) -> tuple[int, str]:
    with pytest.raises(pymysql.MySQLError) as e:
        cur.execute(sql)
    return e.value.args[0], e.value.args[1]


def test_a_definer_view_made_on_the_server_does_not_widen_a_database_grant(
        proxy, mariadb, tls_files, viewer_grants, clean_views):
    # made by root, outside the proxy, with root's rights: the server would show it to anyone
    # granted hr_test.*
    mariadb.execute_root("CREATE SQL SECURITY DEFINER VIEW hr_test.pay AS "
                         "SELECT employee_id AS emp_no, amount, note FROM hr_prod.salary")
    mariadb.execute_root("CREATE VIEW hr_test.nested AS SELECT note FROM hr_test.pay")
    made_elsewhere(proxy)
    c = connect(proxy, tls_files, "viewer")
    with c.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM employee")  # the database grant works
        for sql in ("SELECT note FROM pay", "SELECT * FROM pay WHERE note IS NOT NULL", "SELECT note FROM nested",
                    "SELECT (SELECT MAX(note) FROM hr_test.pay)", "SELECT e.id FROM employee e JOIN pay p ON p.emp_no = e.id"):
            code, message = denied(cur, sql)
            assert code == 1142 and "hr_prod.salary" in message and "missing_grant" in message, (sql, message)
        code, _ = denied(cur, "PREPARE s FROM 'SELECT note FROM pay'")
        assert code == 1142
        # the view is visible, its definition (which names hr_prod.salary) is not
        cur.execute("SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = 'hr_test' "
                    "ORDER BY TABLE_NAME")
        assert cur.fetchall() == (("nested", ""), ("pay", ""))
        code, message = denied(cur, "SHOW CREATE VIEW pay")
        assert code == 1142 and "SHOW VIEW" in message
    with pytest.raises(pymysql.MySQLError) as e:  # the binary protocol too
        c.cursor().execute("SELECT note FROM pay WHERE emp_no > %s", (0,))
    assert e.value.args[0] == 1142

    viewer_grants("  - {subject: user:viewer, grant: hr_prod.salary, privileges: [SELECT]}\n")
    with c.cursor() as cur:
        cur.execute("SELECT note FROM nested WHERE note LIKE 'CANARY%'")
        assert cur.fetchall() == ((CANARY,),)
    c.close()
    allowed = [e for e in proxy.events if e.get("type") == "statement.completed" and e.get("user") == "viewer"
               and "nested" in (e.get("statement") or "")]
    assert allowed and "hr_prod.salary" in allowed[-1]["tables"]  # the audit names what was read


def test_views_made_through_the_proxy_are_invoker_views_with_mysqls_privileges(
        proxy, mariadb, tls_files, viewer_grants, clean_views):
    admin = connect(proxy, tls_files, "admin")
    with admin.cursor() as cur:
        cur.execute("CREATE VIEW names AS SELECT id, first_name FROM employee")
        cur.execute("CREATE OR REPLACE VIEW names AS SELECT id, first_name, last_name FROM employee")
        cur.execute("SELECT COUNT(*) FROM names")
        assert cur.fetchone()[0] == 50
        code, message = denied(cur, "CREATE SQL SECURITY DEFINER VIEW refused AS SELECT 1")
        assert code == 1142 and "SQL SECURITY INVOKER" in message
        code, message = denied(cur, "CREATE DEFINER = `root`@`localhost` VIEW refused AS SELECT 1")
        assert code == 1142 and "DEFINER" in message
    admin.close()
    (security,) = mariadb.execute_root(
        "SELECT SECURITY_TYPE FROM information_schema.VIEWS WHERE TABLE_SCHEMA = 'hr_test' AND TABLE_NAME = 'names'")
    assert security == ("INVOKER",)

    c = connect(proxy, tls_files, "viewer")
    with c.cursor() as cur:
        code, message = denied(cur, "CREATE VIEW refused AS SELECT id FROM employee")
        assert code == 1142 and "CREATE VIEW command denied" in message
        code, message = denied(cur, "DROP VIEW names")
        assert code == 1142 and "DROP command denied" in message
    viewer_grants("  - {subject: user:viewer, grant: hr_test.refused, privileges: [CREATE VIEW, DROP]}\n")
    with c.cursor() as cur:
        code, message = denied(cur, "CREATE VIEW refused AS SELECT employee_id FROM hr_prod.salary")  # SELECT on what it reads
        assert code == 1142 and "hr_prod.salary" in message
        cur.execute("CREATE VIEW refused AS SELECT id FROM employee")
        cur.execute("DROP VIEW refused")
    c.close()


def test_a_view_made_through_the_proxy_is_expanded_by_the_next_statement_of_every_session(
        proxy, mariadb, tls_files, viewer_grants, clean_views):
    viewer = connect(proxy, tls_files, "viewer")
    with viewer.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM employee")  # the views of hr_test are known now (none)
    admin = connect(proxy, tls_files, "admin")
    with admin.cursor() as cur:
        cur.execute("CREATE VIEW hr_test.late AS SELECT employee_id, note FROM hr_prod.salary")
    admin.close()
    with viewer.cursor() as cur:
        code, message = denied(cur, "SELECT note FROM late")  # not taken for a table of hr_test
        assert code == 1142 and "hr_prod.salary" in message
    viewer.close()


def test_reading_a_view_stays_on_the_fast_path(proxy, mariadb, tls_files, viewer_grants, clean_views):
    """(When the proxy has one: the suite also runs with JITPROXY_TEST_FAST_PATH=off.)"""
    mariadb.execute_root("CREATE VIEW hr_test.names AS SELECT id, first_name FROM hr_test.employee")
    made_elsewhere(proxy)
    c = connect(proxy, tls_files, "viewer")
    with c.cursor() as cur:
        cur.execute("SELECT first_name FROM names WHERE id = 1")
        before = proxy.ctx.fast_statements
        for _ in range(3):
            cur.execute("SELECT first_name FROM names WHERE id = 1")
            assert len(cur.fetchall()) == 1
        assert proxy.ctx.fast_statements == before + (3 if proxy.ctx.fast_path else 0)
    c.close()

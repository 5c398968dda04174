"""Stored functions run with their definer's rights: a call needs EXECUTE on that routine, and
must be qualified (db.fn()) so the proxy knows which routine it is."""

from __future__ import annotations

import pymysql
import pytest

from tests.integration.conftest import client_ssl


@pytest.fixture(scope="module")
def payroll_function(mariadb):
    with mariadb.root_connection("hr_prod") as conn, conn.cursor() as cur:
        cur.execute("DROP FUNCTION IF EXISTS top_salary")
        cur.execute("CREATE FUNCTION top_salary() RETURNS DECIMAL(10,2) READS SQL DATA "
                    "RETURN (SELECT MAX(amount) FROM salary)")
    yield
    mariadb.execute_root("DROP FUNCTION IF EXISTS hr_prod.top_salary")


def test_stored_function_needs_execute_on_it(proxy, policies_dir, tls_files, payroll_function):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                        database="hr_prod", ssl=client_ssl(tls_files))
    with c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT hr_prod.top_salary()")
        assert e.value.args[0] == 1142 and "EXECUTE command denied" in e.value.args[1]
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT top_salary()")  # unqualified: could be a UDF or any stored function
        assert e.value.args[0] == 1142 and "unknown_function" in e.value.args[1]
    (policies_dir / "routine.yaml").write_text(
        "grants:\n  - {subject: user:dev, grant: hr_prod.top_salary, privileges: [EXECUTE]}\n")
    proxy.ctx.grants.reload()
    try:
        with c.cursor() as cur:
            cur.execute("SELECT hr_prod.top_salary()")
            assert cur.fetchone()[0] is not None  # reads salary with the definer's rights
    finally:
        (policies_dir / "routine.yaml").unlink()
        proxy.ctx.grants.reload()
    c.close()

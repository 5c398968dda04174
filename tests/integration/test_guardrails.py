"""Guardrails from grants: a maximum number of rows per SELECT (the rest of the result is read
from the database but never reaches the client, which gets a clear error instead)."""

from __future__ import annotations

import pymysql
import pytest

from tests.integration.conftest import client_ssl
from tests.integration.rawclient import RawClient, err_code


@pytest.fixture
def capped(proxy, policies_dir):
    (policies_dir / "capped.yaml").write_text(
        "grants:\n  - {subject: user:capped, grant: hr_prod.salary, privileges: [SELECT], max_rows: 50}\n"
        "  - {subject: user:capped, grant: hr_prod.title, privileges: [SELECT]}\n"
    )
    proxy.ctx.grants.reload()
    yield proxy
    (policies_dir / "capped.yaml").unlink()
    proxy.ctx.grants.reload()


def test_select_over_max_rows_gets_an_error_instead_of_the_rest(capped, tls_files):
    c = pymysql.connect(host="127.0.0.1", port=capped.port, user="capped", password=capped.token("capped"),
                        database="hr_prod", ssl=client_ssl(tls_files))
    with c.cursor() as cur:
        assert cur.execute("SELECT employee_id FROM salary ORDER BY employee_id LIMIT 50") == 50
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT employee_id, amount FROM salary")
        assert e.value.args[0] == 1104 and "max_rows" in e.value.args[1]
        # a join through the capped grant is capped too; an uncapped table alone is not
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SELECT t.title FROM title t JOIN salary s ON s.employee_id = t.employee_id")
        assert cur.execute("SELECT title FROM title") == 400
    c.close()
    failed = [e for e in capped.events if e.get("user") == "capped" and e["type"] == "statement.failed"]
    assert failed and failed[0]["error_code"] == 1104 and failed[0]["rows"] > 50


def test_max_rows_applies_to_prepared_statements(capped):
    """Binary protocol: 50 rows, then ERR 1104 in place of the 51st (as a server does on KILL QUERY
    mid-result). Raw client: mysql-connector-python (pure, 9.x) hangs on any ERR after binary rows
    (its read_binary_result only resets on EOF), whoever sends it."""
    raw = RawClient(capped.port)
    raw.start_tls()
    assert raw.login("capped", capped.token("capped").encode())[:1] == b"\x00"
    assert raw.command(b"\x02hr_prod")[:1] == b"\x00"
    prep = raw.command(b"\x16SELECT employee_id FROM salary WHERE amount > 0")
    assert prep[:1] == b"\x00"
    raw.read(), raw.read()  # one column definition + EOF
    raw.seq = 0
    raw.write(b"\x17" + prep[1:5] + b"\x00\x01\x00\x00\x00")
    assert raw.read() == b"\x01"  # one column
    raw.read(), raw.read()  # its definition + EOF
    rows = 0
    while (pkt := raw.read())[:1] == b"\x00":
        rows += 1
    assert rows == 50 and err_code(pkt) == 1104
    assert raw.command(b"\x0e")[:1] == b"\x00"  # the session goes on (the rest was drained)
    raw.close()


def test_update_or_delete_without_where_needs_a_grant_that_allows_it(proxy, policies_dir, tls_files, mariadb):
    (policies_dir / "writer.yaml").write_text(
        "grants:\n  - {subject: user:writer, grant: hr_test.employee, privileges: [SELECT, UPDATE, DELETE]}\n"
    )
    proxy.ctx.grants.reload()
    try:
        c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="writer", password=proxy.token("writer"),
                            database="hr_test", ssl=client_ssl(tls_files), autocommit=True)
        with c.cursor() as cur:
            for sql in ("UPDATE employee SET dept = dept /*unbounded-1*/", "DELETE FROM employee LIMIT 1 /*unbounded-2*/"):
                with pytest.raises(pymysql.MySQLError) as e:
                    cur.execute(sql)
                assert e.value.args[0] == 1142 and "unbounded_write" in e.value.args[1]
            assert cur.execute("UPDATE employee SET dept = dept WHERE id = 1") in (0, 1)
        c.close()
        assert "unbounded-1" not in mariadb.general_log_text() and "unbounded-2" not in mariadb.general_log_text()
        admin = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                                database="hr_test", ssl=client_ssl(tls_files), autocommit=True)
        with admin.cursor() as cur:  # allow_unbounded_writes: true
            cur.execute("UPDATE employee SET dept = dept")
        admin.close()
    finally:
        (policies_dir / "writer.yaml").unlink()
        proxy.ctx.grants.reload()

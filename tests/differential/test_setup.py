"""The premises of the differential suite: the MariaDB account holds exactly the policy's
grants, canaries sit exactly in the tables the person may not read, and both paths work."""

from __future__ import annotations

from collections import defaultdict

from proxy.authz.model import Grant, Privilege
from tests.differential import scratch as schema
from tests.differential.canary import CanaryCheck, ProxyResponse
from tests.differential.harness import Case, Jit, Server, Verdict, compare


def test_mariadb_account_holds_exactly_the_policy(scratch) -> None:
    expected: dict[tuple[str, str], set[str]] = defaultdict(set)
    for g in scratch.grants:
        expected[(g.db, g.table)] |= {p.value for p in g.privileges}
    actual: dict[tuple[str, str], set[str]] = defaultdict(set)
    with scratch.mariadb.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT Db, Table_name, Table_priv FROM mysql.tables_priv WHERE User = %s", (schema.SUBJECT_USER,))
        for db, table, privs in cur.fetchall():
            actual[(db, table)] |= {p.upper() for p in privs.split(",") if p}
        cur.execute("SELECT * FROM mysql.db WHERE User = %s", (schema.SUBJECT_USER,))
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            record = dict(zip(names, row))
            for p in Privilege:
                if record.get(f"{p.value.capitalize()}_priv") == "Y":
                    actual[(record["Db"], "*")].add(p.value)
        cur.execute("SELECT COUNT(*) FROM mysql.columns_priv WHERE User = %s", (schema.SUBJECT_USER,))
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT COUNT(*) FROM mysql.procs_priv WHERE User = %s", (schema.SUBJECT_USER,))
        assert cur.fetchone()[0] == 0
        cur.execute("SHOW GRANTS FOR %s@'%%'", (schema.SUBJECT_USER,))
        global_grants = [r[0] for r in cur.fetchall() if " ON *.* " in r[0]]
    assert dict(actual) == dict(expected)
    assert len(global_grants) == 1 and global_grants[0].startswith("GRANT USAGE ON *.*")


def test_policy_and_schema_agree_on_what_is_readable(scratch) -> None:
    readable = {
        (db, table)
        for (db, table) in schema.TABLES
        if any(
            Privilege.SELECT in g.privileges and g.db == db and g.table in ("*", table)
            for g in scratch.grants
        )
    }
    assert readable == {t for t, r in schema.TABLES.items() if r}


def test_canaries_are_exactly_in_unreadable_tables(scratch) -> None:
    with scratch.mariadb.root_connection() as conn, conn.cursor() as cur:
        for (db, table), readable in schema.TABLES.items():
            cur.execute(f"SELECT * FROM {db}.{schema.quote(table)}")
            dump = repr(cur.fetchall())
            assert ("CANARY-" in dump) is (not readable), (db, table)
            if not readable:
                assert dump.count(schema.canary(db, table)) >= schema.ROWS_PER_TABLE * len(schema.TEXT_COLUMNS)


def test_both_paths_allow_and_deny_the_basics(scratch, jit, direct, via_proxy) -> None:
    for sql, allowed in [("SELECT name FROM employee", True), ("SELECT name FROM salary", False)]:
        assert jit.decide(sql, "diff_a").allowed is allowed
        assert (direct.run(sql, "diff_a").server is Server.RAN) is allowed
        response = via_proxy.run(sql, "diff_a", keep_session=True)
        assert response.ok is allowed and response.denied_by_proxy is (not allowed)


def test_a_broader_policy_shows_up_as_leaks(scratch, direct) -> None:
    """Control for the oracle: a jitproxy that grants more than the MariaDB account holds
    (SELECT on all of diff_a) must produce leaks on the canary table, not agreement."""
    broad = [Grant("user:difftest", "diff_a", "*", frozenset({Privilege.SELECT}))]
    result = compare(Case("control", "SELECT note FROM salary", "diff_a"), Jit(broad, "difftest"), direct)
    assert result.verdict is Verdict.LEAK, result.describe()


def test_canary_scan_finds_canaries_but_not_what_was_typed() -> None:
    """Control for the scanner: a canary anywhere in a response is found (any case, bytes too);
    a name the statement itself typed is not counted (the proxy's denial echoes it)."""
    check = CanaryCheck(schema.value_canaries(), schema.name_canaries())
    value = schema.canary("diff_b", "bonus")
    assert check.scan("SELECT 1", ProxyResponse(True, ["x"], [(value.lower().encode(),)])) == [value.lower()]
    assert check.scan("SELECT 1", ProxyResponse(False, error_message=f"Duplicate entry '{value}'")) != []
    typed = f"SELECT * FROM {schema.CANARY_TABLE}"
    denial = ProxyResponse(False, error_message=f"... for table 'diff_a.{schema.CANARY_TABLE}' (jitproxy: missing_grant)")
    assert check.scan(typed, denial) == [] and denial.denied_by_proxy

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
    expected_columns: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for g in scratch.grants:
        if g.columns is None:
            expected[(g.db, g.table)] |= {p.value for p in g.privileges}
        else:
            for column in g.columns:
                expected_columns[(g.db, g.table, column)] |= {p.value for p in g.privileges}
    actual: dict[tuple[str, str], set[str]] = defaultdict(set)
    actual_columns: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    with scratch.mariadb.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT Db, Table_name, Table_priv FROM mysql.tables_priv WHERE User = %s", (schema.SUBJECT_USER,))
        for db, table, privs in cur.fetchall():
            if privs:  # a table with column privileges only has a row with an empty Table_priv
                actual[(db, table)] |= {p.upper() for p in privs.split(",") if p}
        cur.execute(
            "SELECT Db, Table_name, Column_name, Column_priv FROM mysql.columns_priv WHERE User = %s",
            (schema.SUBJECT_USER,),
        )
        for db, table, column, privs in cur.fetchall():
            actual_columns[(db, table, column.lower())] |= {p.upper() for p in privs.split(",") if p}
        cur.execute("SELECT * FROM mysql.db WHERE User = %s", (schema.SUBJECT_USER,))
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            record = dict(zip(names, row))
            for p in Privilege:
                if record.get(f"{p.value.capitalize()}_priv") == "Y":
                    actual[(record["Db"], "*")].add(p.value)
        cur.execute("SELECT COUNT(*) FROM mysql.procs_priv WHERE User = %s", (schema.SUBJECT_USER,))
        assert cur.fetchone()[0] == 0
        cur.execute("SHOW GRANTS FOR %s@'%%'", (schema.SUBJECT_USER,))
        global_grants = [r[0] for r in cur.fetchall() if " ON *.* " in r[0]]
    assert dict(actual) == dict(expected)
    assert dict(actual_columns) == dict(expected_columns)
    assert expected_columns, "the policy has column-level grants"
    assert len(global_grants) == 1 and global_grants[0].startswith("GRANT USAGE ON *.*")


def test_policy_and_schema_agree_on_what_is_readable(scratch) -> None:
    for (db, table) in schema.TABLES:
        select = [
            g for g in scratch.grants
            if Privilege.SELECT in g.privileges and g.db == db and g.table in ("*", table)
        ]
        if not select:
            readable = frozenset()
        elif any(g.columns is None for g in select):
            readable = frozenset(schema.COLUMN_NAMES)
        else:
            readable = frozenset().union(*(g.columns for g in select))
        assert readable == schema.readable_columns(db, table), (db, table)
    for table, columns in scratch.table_columns.items():
        assert set(schema.COLUMN_NAMES) <= columns, table


def test_canaries_are_exactly_in_unreadable_columns(scratch) -> None:
    with scratch.mariadb.root_connection() as conn, conn.cursor() as cur:
        for (db, table) in schema.TABLES:
            readable = schema.readable_columns(db, table)
            for column in schema.COLUMN_NAMES:
                cur.execute(f"SELECT {column} FROM {db}.{schema.quote(table)}")
                dump = repr(cur.fetchall())
                hidden = column in schema.canary_columns(db, table)
                assert ("CANARY-" in dump) is hidden, (db, table, column)
                assert hidden or column in readable or column not in (*schema.TEXT_COLUMNS, "doc")
                if hidden:
                    assert dump.count(schema.canary(db, table)) == schema.ROWS_PER_TABLE, (db, table, column)


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

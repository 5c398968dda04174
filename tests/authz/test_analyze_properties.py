"""Property tests for `analyze`: it never raises, its results are well formed, and on queries
from a small SQL grammar its tables agree with sqlglot's own `qualify_tables` resolution."""

from __future__ import annotations

import os

import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp
from sqlglot.optimizer.qualify_tables import qualify_tables

from proxy.authz.analyze import analyze
from proxy.authz.infoschema import READABLE
from proxy.authz.model import Analysis, Privilege, StatementKind, TableRef
from proxy.authz.names import INFORMATION_SCHEMA, canonical_table

DB = "hr_prod"
WRITES = frozenset({Privilege.UPDATE, Privilege.DELETE})
PREPARED_KINDS = frozenset(
    {StatementKind.SQL_PREPARE, StatementKind.SQL_EXECUTE, StatementKind.SQL_DEALLOCATE}
)
# JITPROXY_PROPERTY_EXAMPLES=5000 for a deeper local run.
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("JITPROXY_PROPERTY_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # no example database written into the work tree
)


def check_well_formed(result: Analysis) -> None:
    assert isinstance(result, Analysis)
    assert isinstance(result.kind, StatementKind)
    assert isinstance(result.statement_class, str) and result.statement_class
    if result.kind is StatementKind.DENIED:
        assert result.deny is not None
        assert result.requirements == frozenset()
        assert result.database_access == frozenset()
        assert result.use_db is None and result.kill_target is None
        assert result.metadata_tables == frozenset() and result.unbounded_writes == frozenset()
        assert result.prepared_name is None and result.prepared_analysis is None
    else:
        assert result.deny is None
    for req in result.requirements:
        assert isinstance(req.privilege, Privilege)
        assert isinstance(req.target, TableRef)
        assert req.target.db and req.target.table
        assert req.target.table == req.target.table.rstrip()
        assert req.target.db != INFORMATION_SCHEMA  # metadata_tables instead
    assert result.metadata_tables <= READABLE
    writes = {r.target for r in result.requirements if r.privilege in WRITES}
    assert result.unbounded_writes <= writes
    prepared = result.kind in PREPARED_KINDS
    assert (result.prepared_name is not None) == prepared
    assert (result.prepared_analysis is not None) == (result.kind is StatementKind.SQL_PREPARE)
    if result.prepared_analysis is not None:
        inner = result.prepared_analysis
        check_well_formed(inner)
        assert inner.kind in (StatementKind.QUERY, StatementKind.TRANSACTION)
        assert result.requirements == inner.requirements


# --- arbitrary text ----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=20)))
def test_never_raises_on_arbitrary_text(sql: str, db: str | None) -> None:
    check_well_formed(analyze(sql, db))


FRAGMENTS = [
    "SELECT", "FROM", "WHERE", "JOIN", "ON", "UNION", "ALL", "WITH", "RECURSIVE", "AS", "INSERT",
    "INTO", "VALUES", "UPDATE", "SET", "DELETE", "USING", "CREATE", "TABLE", "DROP", "ALTER",
    "SHOW", "TABLES", "COLUMNS", "DESCRIBE", "EXPLAIN", "USE", "KILL", "QUERY", "BEGIN", "COMMIT",
    "ROLLBACK", "LOW_PRIORITY", "QUICK", "IGNORE", "DELAYED", "HIGH_PRIORITY", "OUTFILE", "NAMES",
    "GLOBAL", "SESSION", "sql_mode", "autocommit", "LIMIT", "ORDER BY", "GROUP BY", "HAVING",
    "salary", "employee", "`hr_prod`", "`a.b`", "hr_prod.salary", "@v", "@@sql_mode",
    "@@session.x", "?", "*", ",", ".", "(", ")", ";", "=", ":=", "'str'", '"dq"', "'\\''", "1",
    "0x41", "1e5", "-- c\n", "# c\n", "/* c */", "/*!50000 ", "/*M!1 ", "*/", "/*+ BKA(t) */",
    "LOAD_FILE(", "SLEEP(", "leak(", "COUNT (", "db.fn(", "`count`(", "JSON_TABLE(", "COLUMNS (",
    "\u00a0", "\t", "\n", "\x0b", "\\", "`", "'", '"',
    "REPLACE", "DO", "CALL", "PREPARE", "EXECUTE", "DEALLOCATE", "IMMEDIATE", "HANDLER", "OPEN",
    "READ", "WRITE", "LOCK TABLES", "UNLOCK TABLES", "XA", "START", "SAVEPOINT", "RELEASE", "TO",
    "RENAME", "TEMPORARY", "HELP", "GET DIAGNOSTICS", "information_schema.tables",
    "INFORMATION_SCHEMA.PROCESSLIST", "'SELECT * FROM salary'", "'SELECT 1'",
]


@PROPERTY_SETTINGS
@given(
    st.lists(st.sampled_from(FRAGMENTS), max_size=25),
    st.lists(st.sampled_from([" ", "", "\n", "  "]), min_size=25, max_size=25),
    st.sampled_from([None, DB, "other", "INFORMATION_SCHEMA"]),
)
def test_never_raises_on_sql_token_soup(parts: list[str], gaps: list[str], db: str | None) -> None:
    sql = "".join(p + g for p, g in zip(parts, gaps))
    check_well_formed(analyze(sql, db))


# --- a small query grammar, checked against qualify_tables ------------------------------------

NAMES = ["salary", "employee", "title", "dept"]
RECURSIVE_CTE = "r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3)"


def draw_table(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(NAMES))
    return draw(st.sampled_from([name, f"`{name}`", f"payroll.{name}", f"{DB}.{name}"]))


def draw_source(draw: st.DrawFn, depth: int) -> str:
    if depth > 0 and draw(st.booleans()):
        return f"({draw_query(draw, depth - 1)}) AS d{draw(st.integers(0, 9))}"
    return draw_table(draw)


def draw_select(draw: st.DrawFn, depth: int) -> str:
    if depth <= 0:
        return f"SELECT * FROM {draw_table(draw)}"
    column = draw(st.sampled_from(["*", "a", "sub"]))
    if column == "sub":
        column = f"({draw_query(draw, depth - 1)}) AS x"
    sql = f"SELECT {column} FROM {draw_source(draw, depth)}"
    if draw(st.booleans()):
        sql += f" JOIN {draw_source(draw, depth)} ON 1 = 1"
    condition = draw(st.sampled_from(["1 = 1", "IN", "EXISTS", "IS NULL"]))
    if condition != "1 = 1":
        sub = draw_query(draw, depth - 1)
        condition = {"IN": f"a IN ({sub})", "EXISTS": f"EXISTS ({sub})"}.get(
            condition, f"({sub}) IS NULL"
        )
    return f"{sql} WHERE {condition}"


def draw_union(draw: st.DrawFn, depth: int) -> str:
    right = draw_select(draw, depth)
    if draw(st.booleans()):
        right = f"({draw_query(draw, depth - 1)})"
    return f"{draw_select(draw, depth)} {draw(st.sampled_from(['UNION', 'UNION ALL']))} {right}"


def draw_query(draw: st.DrawFn, depth: int) -> str:
    """SELECT / UNION / WITH (CTE names overlap table names) / WITH RECURSIVE, nested."""
    shape = draw(st.sampled_from(["select", "union", "with", "recursive"]))
    if depth <= 0 or shape == "select":
        return draw_select(draw, depth)
    if shape == "union":
        return draw_union(draw, depth)
    body = draw_union(draw, depth) if draw(st.booleans()) else draw_select(draw, depth)
    if shape == "recursive":
        return f"WITH RECURSIVE {RECURSIVE_CTE} {body}"
    cte_names = st.sampled_from(NAMES + ["c1", "c2"])
    names = draw(st.lists(cte_names, min_size=1, max_size=3, unique=True))
    ctes = ", ".join(f"{name} AS ({draw_query(draw, depth - 1)})" for name in names)
    return f"WITH {ctes} {body}"


@st.composite
def query(draw: st.DrawFn, depth: int) -> str:
    return draw_query(draw, depth)


def test_grammar_rejects_consecutive_with_clauses() -> None:
    # sqlglot merges them into one clause; MySQL rejects the statement.
    for sql in (
        "WITH salary AS (SELECT 1) WITH RECURSIVE r AS (SELECT 1) SELECT * FROM salary",
        "SELECT * FROM employee WHERE a IN "
        "(WITH salary AS (SELECT 1) WITH r AS (SELECT 1) SELECT * FROM salary)",
    ):
        result = analyze(sql, DB)
        assert result.deny is not None and result.deny.code.value == "parse_error", sql


def qualify_tables_reads(sql: str) -> set[TableRef]:
    tree = qualify_tables(sqlglot.parse_one(sql, read="mysql"), db=DB, dialect="mysql")
    return {canonical_table(t.db, t.name) for t in tree.find_all(exp.Table) if t.db}


def nested_with_denial(result) -> bool:
    """A WITH inside a CTE body is denied on purpose (it crashes MariaDB 10.11)."""
    return result.deny is not None and "WITH clause inside a CTE body" in result.deny.detail


@PROPERTY_SETTINGS
@given(query(3))
def test_grammar_queries_read_what_qualify_tables_reads(sql: str) -> None:
    result = analyze(sql, DB)
    check_well_formed(result)
    if nested_with_denial(result):
        return
    assert result.deny is None, (sql, result.deny)
    assert result.kind is StatementKind.QUERY
    assert {r.privilege for r in result.requirements} <= {Privilege.SELECT}
    assert {r.target for r in result.requirements} == qualify_tables_reads(sql), sql


@PROPERTY_SETTINGS
@given(query(2), st.sampled_from(["/*!50000 ", "/*M!100000 ", "/*!"]))
def test_executable_comment_anywhere_is_denied(sql: str, opener: str) -> None:
    # Wrap a suffix of the statement in an executable comment, at any token boundary.
    words = sql.split(" ")
    for cut in range(1, len(words)):
        smuggled = " ".join(words[:cut]) + f" {opener}" + " ".join(words[cut:]) + " */"
        result = analyze(smuggled, DB)
        check_well_formed(result)
        assert result.deny is not None and result.deny.code.value == "executable_comment", smuggled


@PROPERTY_SETTINGS
@given(query(2), query(1))
def test_second_statement_is_always_denied(first: str, second: str) -> None:
    result = analyze(f"{first}; {second}", DB)
    check_well_formed(result)
    assert result.deny is not None and result.deny.code.value == "multiple_statements"


# --- statements read from their tokens: nothing hides behind them ------------------------------

TOKEN_GRAMMAR_STATEMENTS = [
    "CALL p(1, (SELECT amount FROM salary))",
    "PREPARE s FROM 'SELECT amount FROM salary'",
    "EXECUTE s USING @a",
    "DEALLOCATE PREPARE s",
    "LOCK TABLES salary READ, title WRITE",
    "UNLOCK TABLES",
    "XA START 'x'",
    "SAVEPOINT s",
    "RENAME TABLE a TO b",
    "DO (SELECT amount FROM salary)",
    "REPLACE INTO title SELECT * FROM salary",
    "HELP 'contents'",
    "GET DIAGNOSTICS @n = NUMBER",
]


@PROPERTY_SETTINGS
@given(
    st.sampled_from(TOKEN_GRAMMAR_STATEMENTS),
    st.sampled_from(["/*!50000 ", "/*M!100000 ", "/*!"]),
    st.integers(0, 40),
)
def test_executable_comment_in_token_grammar_statements_is_denied(
    sql: str, opener: str, at: int
) -> None:
    # sqlglot would swallow the rest of a CALL / PREPARE / LOCK TABLES ... into one string
    # token; the analyzer tokenizes them in full, so the lexical checks see everything.
    words = sql.split(" ")
    cuts = [i for i in range(1, len(words) + 1) if " ".join(words[:i]).count("'") % 2 == 0]
    cut = cuts[at % len(cuts)]  # a token boundary outside string literals
    smuggled = " ".join(words[:cut]) + f" {opener}" + " ".join(words[cut:]) + " */"
    result = analyze(smuggled, DB)
    check_well_formed(result)
    assert result.deny is not None and result.deny.code.value == "executable_comment", smuggled


@PROPERTY_SETTINGS
@given(st.sampled_from(TOKEN_GRAMMAR_STATEMENTS), query(1))
def test_second_statement_after_token_grammar_statement_is_denied(first: str, second: str) -> None:
    result = analyze(f"{first}; {second}", DB)
    check_well_formed(result)
    assert result.deny is not None and result.deny.code.value == "multiple_statements"


def mysql_quote(text: str, quote: str) -> str:
    """`text` as a MySQL string literal, escaped one of the ways the server accepts."""
    if quote == "\\":
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return quote + text.replace(quote, quote + quote) + quote


@PROPERTY_SETTINGS
@given(query(2), st.sampled_from(["'", '"', "\\"]))
def test_prepare_authorizes_its_text_as_that_statement(sql: str, quote: str) -> None:
    direct = analyze(sql, DB)
    prepared = analyze(f"PREPARE s FROM {mysql_quote(sql, quote)}", DB)
    check_well_formed(prepared)
    if nested_with_denial(direct):
        assert nested_with_denial(prepared)
        return
    assert prepared.kind is StatementKind.SQL_PREPARE, prepared.deny
    assert prepared.prepared_analysis == direct
    assert prepared.requirements == direct.requirements

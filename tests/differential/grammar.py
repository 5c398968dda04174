"""A small SQL grammar for Hypothesis over the scratch schema.

It produces statements MariaDB can mostly parse: SELECT with joins, derived tables and
subqueries in the select list, WHERE, HAVING, ORDER BY and JOIN ON; CTEs (also RECURSIVE, also
named like real tables, in other case, or used outside their scope); UNION / INTERSECT /
EXCEPT; INSERT ... VALUES / SELECT / ON DUPLICATE KEY UPDATE [RETURNING ...]; single- and
multi-table UPDATE and DELETE (single-table DELETE ... RETURNING too); `SET @v = (subquery)`;
EXPLAIN. Tables are granted, write-only or canary ones, written
qualified or not; diff_d's are granted by column. Every table has the columns of `COLUMNS`, so names resolve wherever they land.
"""

from __future__ import annotations

import re

from hypothesis import strategies as st

# (db, table) pairs; diff_a is the current database. Readable tables come up more often, so that
# a statement is often allowed unless one reference in a tricky place is not.
REAL_TABLES = [
    *[("diff_a", "employee")] * 4,
    *[("diff_a", "department")] * 2,
    *[("diff_a", "title")] * 4,
    *[("diff_c", "employee")] * 2,
    ("diff_c", "scratch"),
    ("diff_a", "audit"),
    ("diff_a", "ledger"),
    *[("diff_a", "salary")] * 2,
    ("diff_a", "hidden_7c1e"),
    ("diff_b", "bonus"),
    ("diff_b", "keys"),
    # column grants (canaries in every column that is not SELECT-granted)
    *[("diff_d", "employee")] * 2,
    *[("diff_d", "title")] * 2,
    ("diff_d", "department"),
]
WRITE_TARGETS = [
    *[("diff_a", "title")] * 4,
    *[("diff_a", "audit")] * 2,
    *[("diff_a", "ledger")] * 2,
    ("diff_a", "employee"),
    ("diff_a", "salary"),
    ("diff_c", "scratch"),
    ("diff_b", "bonus"),
    ("diff_d", "title"),
    ("diff_d", "salary"),
]
COLUMNS = ["emp_no", "name", "note", "amount"]
# CTE names: fresh ones, names of real tables (shadowing), and a different case of them.
CTE_NAMES = ["c1", "c2", "employee", "salary", "title", "ledger", "Salary", "EMPLOYEE", "bonus"]
ALIASES = ["t", "u", "x", "salary", "employee", "T"]
MAX_DEPTH = 2

_RESERVED = {"keys"}


def _ident(name: str) -> str:
    return f"`{name}`" if name in _RESERVED else name


@st.composite
def table_name(draw: st.DrawFn, ctes: tuple[str, ...], pool: list[tuple[str, str]] = REAL_TABLES) -> str:
    """A table reference as written: a CTE name, or a real table qualified or not."""
    if ctes and draw(st.booleans()):
        return draw(st.sampled_from(ctes))
    db, table = draw(st.sampled_from(pool))
    style = draw(st.integers(0, 9))
    if db == "diff_a" and style < 6:
        return _ident(table)
    if style == 9:
        return f"`{db}`.`{table}`"
    return f"{db}.{_ident(table)}"


@st.composite
def column(draw: st.DrawFn, qualifiers: tuple[str, ...]) -> str:
    col = draw(st.sampled_from(COLUMNS))
    if qualifiers and draw(st.booleans()):
        return f"{draw(st.sampled_from(qualifiers))}.{col}"
    return col


@st.composite
def scalar_subquery(draw: st.DrawFn, depth: int, ctes: tuple[str, ...]) -> str:
    inner = draw(select_core(depth + 1, ctes, one_column=True))
    return f"({inner} LIMIT 1)"


@st.composite
def expression(draw: st.DrawFn, depth: int, ctes: tuple[str, ...], qualifiers: tuple[str, ...]) -> str:
    kind = draw(st.sampled_from(["int", "str", "col", "col", "col", "sub"] if depth < MAX_DEPTH else ["int", "col"]))
    if kind == "int":
        return str(draw(st.integers(0, 5)))
    if kind == "str":
        return "'v'"
    if kind == "col":
        return draw(column(qualifiers))
    return draw(scalar_subquery(depth, ctes))


@st.composite
def condition(draw: st.DrawFn, depth: int, ctes: tuple[str, ...], qualifiers: tuple[str, ...]) -> str:
    simple = ["eq", "eq", "eq", "notnull"]
    kinds = simple + ["in", "exists", "scalar", "all", "andor"] if depth < MAX_DEPTH else simple
    kind = draw(st.sampled_from(kinds))
    if kind == "eq":
        return f"{draw(column(qualifiers))} = {draw(st.integers(0, 5))}"
    if kind == "notnull":
        return f"{draw(column(qualifiers))} IS NOT NULL"
    if kind == "in":
        sub = draw(select_core(depth + 1, ctes, one_column=True))
        return f"{draw(column(qualifiers))} IN ({sub})"
    if kind == "exists":
        return f"EXISTS ({draw(query(depth + 1, ctes))})"
    if kind == "scalar":
        return f"{draw(scalar_subquery(depth, ctes))} IS NOT NULL"
    if kind == "all":
        sub = draw(select_core(depth + 1, ctes, one_column=True))
        return f"{draw(column(qualifiers))} > ALL ({sub})"
    left = draw(condition(depth + 1, ctes, qualifiers))
    right = draw(condition(depth + 1, ctes, qualifiers))
    return f"({left} {draw(st.sampled_from(['AND', 'OR']))} {right})"


@st.composite
def source(draw: st.DrawFn, depth: int, ctes: tuple[str, ...], taken: tuple[str, ...] = ()) -> tuple[str, str]:
    """A FROM item → (text, its qualifier). A qualifier already `taken` in the same FROM clause
    gets replaced by a fresh alias: MariaDB rejects duplicates before any privilege check."""
    kinds = ["table"] * 8 + (["derived", "derived", "json_table"] if depth < MAX_DEPTH else [])
    kind = draw(st.sampled_from(kinds))
    alias = draw(st.sampled_from(ALIASES))
    if kind == "table":
        name = draw(table_name(ctes))
        natural = name.split(".")[-1].strip("`")
        if draw(st.booleans()) or natural in taken:
            alias = alias if alias not in taken else f"a{len(taken)}"
            return f"{name} {draw(st.sampled_from(['', 'AS ']))}{alias}", alias
        return name, natural
    alias = alias if alias not in taken else f"a{len(taken)}"
    if kind == "json_table":
        sub = draw(scalar_subquery(depth, ctes))
        return f"JSON_TABLE(JSON_ARRAY({sub}), '$[*]' COLUMNS (note VARCHAR(120) PATH '$')) AS {alias}", alias
    return f"({draw(query(depth + 1, ctes))}) AS {alias}", alias


@st.composite
def from_clause(draw: st.DrawFn, depth: int, ctes: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    text, first = draw(source(depth, ctes))
    qualifiers = [first]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        nxt, q = draw(source(depth, ctes, tuple(qualifiers)))
        qualifiers.append(q)
        join = draw(st.sampled_from(["JOIN", "LEFT JOIN", ",", "STRAIGHT_JOIN", "CROSS JOIN"]))
        if join in (",", "CROSS JOIN"):
            text = f"{text}{join if join == ',' else ' ' + join} {nxt}"
        else:
            on = draw(condition(depth + 1, ctes, tuple(qualifiers)))
            text = f"{text} {join} {nxt} ON {on}"
    return text, tuple(qualifiers)


@st.composite
def select_core(draw: st.DrawFn, depth: int, ctes: tuple[str, ...], one_column: bool = False) -> str:
    frm, qualifiers = draw(from_clause(depth, ctes))
    if one_column:
        items = draw(st.sampled_from([draw(column(qualifiers)), "COUNT(*)", "MAX(note)"]))
    else:
        choice = draw(st.sampled_from(["*", "q.*", "sub", "col", "col", "col"]))
        if choice == "*":
            items = "*"
        elif choice == "q.*" and qualifiers:
            items = f"{draw(st.sampled_from(qualifiers))}.*"
        elif choice == "sub" and depth < MAX_DEPTH:
            items = f"{draw(column(qualifiers))}, {draw(scalar_subquery(depth, ctes))}"
        else:
            items = draw(column(qualifiers))
    text = f"SELECT {items} FROM {frm}"
    if draw(st.booleans()):
        text += f" WHERE {draw(condition(depth, ctes, qualifiers))}"
    tail = draw(st.sampled_from(["", "", "", "group", "order"]))
    if tail == "group":
        text += f" GROUP BY {draw(column(qualifiers))}"
        if depth < MAX_DEPTH and draw(st.booleans()):
            text += f" HAVING COUNT(*) > {draw(scalar_subquery(depth, ctes))}"
    elif tail == "order":
        text += f" ORDER BY {draw(expression(depth, ctes, qualifiers))}"
    return text


@st.composite
def with_clause(draw: st.DrawFn, depth: int, ctes: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """`WITH [RECURSIVE] n1 AS (...), n2 AS (...)` → (text, names now in scope)."""
    names = draw(st.lists(st.sampled_from(CTE_NAMES), min_size=1, max_size=2, unique=True))
    recursive = draw(st.integers(0, 3)) == 0
    parts = []
    visible = ctes
    for name in names:
        # Bodies may reference any CTE name, visible or not: both systems decide what it means.
        body = draw(query(depth + 1, tuple(dict.fromkeys([*visible, *names]))))
        parts.append(f"{name} AS ({body})")
        visible = tuple(dict.fromkeys([*visible, name]))
    keyword = "WITH RECURSIVE" if recursive else "WITH"
    return f"{keyword} {', '.join(parts)}", visible


@st.composite
def query(draw: st.DrawFn, depth: int, ctes: tuple[str, ...]) -> str:
    prefix = ""
    if depth < MAX_DEPTH and draw(st.integers(0, 3)) == 0:
        prefix, ctes = draw(with_clause(depth, ctes))
        prefix += " "
    first = draw(select_core(depth, ctes))
    if depth < MAX_DEPTH and draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]))
        second = draw(select_core(depth + 1, ctes))
        if draw(st.booleans()):
            return f"{prefix}({first}) {op} ({second})"
        return f"{prefix}{first} {op} {second}"
    return prefix + first


@st.composite
def insert(draw: st.DrawFn) -> str:
    target = draw(table_name((), WRITE_TARGETS))
    if draw(st.booleans()):
        value = draw(st.sampled_from(["'v'", "note", draw(scalar_subquery(1, ()))]))
        text = f"INSERT INTO {target} (emp_no, note) VALUES ({draw(st.integers(1, 6)) * 50}, {value})"
    elif draw(st.booleans()):
        body = draw(query(1, ()))
        text = f"INSERT INTO {target} (emp_no) SELECT emp_no + 100 FROM ({body}) AS src"
    else:
        text = f"INSERT INTO {target} (emp_no) {draw(query(1, ()))}"
    if draw(st.integers(0, 3)) == 0:
        text += f" ON DUPLICATE KEY UPDATE note = {draw(expression(1, (), ()))}"
    if draw(st.integers(0, 3)) == 0:
        text += draw(returning(target.split(".")[-1].strip("`")))
    return text


@st.composite
def returning(draw: st.DrawFn, qualifier: str) -> str:
    """MariaDB's RETURNING list of an INSERT or a single-table DELETE: the rows written."""
    kind = draw(st.sampled_from(["*", "q.*", "col", "const", "sub", "mixed"]))
    if kind == "*":
        return " RETURNING *"
    if kind == "q.*":
        return f" RETURNING {_ident(qualifier)}.*"
    if kind == "col":
        return f" RETURNING {draw(column(()))}"
    if kind == "const":
        return f" RETURNING {draw(st.integers(0, 5))}"
    if kind == "sub":
        return f" RETURNING {draw(scalar_subquery(1, ()))}"
    return f" RETURNING {draw(column(()))}, {draw(st.integers(0, 5))}, {draw(scalar_subquery(1, ()))}"


@st.composite
def update(draw: st.DrawFn) -> str:
    target = draw(table_name((), WRITE_TARGETS))
    alias = draw(st.sampled_from(["", " AS t", " t"]))
    qualifier = alias.split()[-1] if alias else target.split(".")[-1].strip("`")
    qualifiers = [qualifier]
    text = f"UPDATE {target}{alias}"
    if draw(st.booleans()):
        other, q = draw(source(1, (), tuple(qualifiers)))
        qualifiers.append(q)
        if draw(st.booleans()):
            text += f", {other}"
        else:
            text += f" JOIN {other} ON {draw(condition(1, (), tuple(qualifiers)))}"
    col = draw(st.sampled_from(COLUMNS[1:]))
    # Every table has every column: unqualified SET columns are ambiguous with two tables.
    qualify = len(qualifiers) > 1 or draw(st.booleans())
    set_target = f"{draw(st.sampled_from(qualifiers))}.{col}" if qualify else col
    text += f" SET {set_target} = {draw(expression(1, (), tuple(qualifiers)))}"
    if draw(st.booleans()):
        text += f" WHERE {draw(condition(1, (), tuple(qualifiers)))}"
    return text


@st.composite
def delete(draw: st.DrawFn) -> str:
    target = draw(table_name((), WRITE_TARGETS))
    shape = draw(st.integers(0, 2))
    if shape == 0:
        text = f"DELETE FROM {target}"
        qualifiers: tuple[str, ...] = (target.split(".")[-1].strip("`"),)
    else:
        alias = draw(st.sampled_from(["t", "T", "x"]))
        other, q = draw(source(1, (), (alias,)))
        victims = alias if draw(st.booleans()) else draw(st.sampled_from([f"{alias}, {q}", q]))
        qualifiers = (alias, q)
        if shape == 1:
            text = f"DELETE {victims} FROM {target} {alias} JOIN {other} ON {draw(condition(1, (), qualifiers))}"
        else:
            text = f"DELETE FROM {victims} USING {target} {alias}, {other}"
    if draw(st.booleans()):
        text += f" WHERE {draw(condition(1, (), qualifiers))}"
    if shape == 0 and draw(st.integers(0, 3)) == 0:
        text += draw(returning(qualifiers[0]))
    return text


def crashes_mariadb(sql: str) -> bool:
    """MariaDB 10.11.19 dies (SIGSEGV) on some WITH clauses nested inside a CTE body, e.g.
    (needs no table and no privilege):
        WITH RECURSIVE a AS (WITH RECURSIVE b AS (SELECT * FROM c), c AS (SELECT * FROM a)
        SELECT 1 UNION ALL SELECT * FROM c) SELECT 1
    and, without RECURSIVE, on this one (SELECT on employee, title and department):
        WITH employee AS (SELECT amount FROM (SELECT * FROM employee salary JOIN title AS x
        ON salary.emp_no = 4 ORDER BY x.amount) AS T WHERE EXISTS (SELECT * FROM title
        ORDER BY 3) UNION ALL SELECT t.* FROM department JOIN title AS t ON note = 0), title AS
        (WITH title AS (SELECT * FROM employee), ledger AS (SELECT t.* FROM employee AS t)
        SELECT title.* FROM title) SELECT employee.* FROM employee UNION SELECT * FROM employee
    The session's MariaDB is shared by the whole test run, so no CTE body here holds a WITH.
    (In this grammar " AS (" only ever opens a CTE body.)"""
    at = sql.find(" AS (")
    while at != -1:
        depth, i = 0, at + 4
        while i < len(sql):
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            if depth == 0:
                break
            i += 1
        if "WITH " in sql[at + 4 : i].upper():
            return True
        at = sql.find(" AS (", at + 1)
    return False


# SQL SECURITY INVOKER views (scratch.py VIEWS) standing in for tables: MariaDB checks what
# they read as the person, jitproxy expands them. (DEFINER views, which MariaDB reads wider, are
# view_cases.yaml's.) Only `table AS alias` items are swapped, so qualifiers still resolve.
_VIEW_SWAPS = ["diff_c.v_open", "diff_c.v_secret_invoker", "diff_c.v_join", "`diff_c`.`v_open`"]
_ALIASED_TABLE = re.compile(r"(?<=FROM |JOIN )([A-Za-z_`.]+)(?= AS \w)")


def statement_with_views() -> st.SearchStrategy[str]:
    """Statements of `statement()` in which some aliased tables are read through views."""
    return st.tuples(statement(), st.lists(st.integers(0, len(_VIEW_SWAPS)), min_size=8, max_size=8)).map(
        lambda drawn: _swap_views(*drawn)).filter(lambda sql: "v_" in sql)


def _swap_views(sql: str, picks: list[int]) -> str:
    at = iter(picks)

    def swap(match: re.Match[str]) -> str:
        pick = next(at, 0)
        return _VIEW_SWAPS[pick - 1] if pick else match.group(1)

    return _ALIASED_TABLE.sub(swap, sql)


def statement(column_grants: bool = False) -> st.SearchStrategy[str]:
    """Statements that touch diff_d (granted by column) when `column_grants`, else none that do."""
    return _statement().filter(lambda sql: not crashes_mariadb(sql) and (_DIFF_D in sql) == column_grants)


_DIFF_D = "diff_d"


@st.composite
def _statement(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        text = draw(query(0, ()))
        modifier = draw(st.integers(0, 7))
        if modifier == 0:
            return f"EXPLAIN {text}"
        if modifier == 1 and not text.startswith("("):  # MariaDB: no lock clause after brackets
            return f"{text} FOR UPDATE"
        return text
    if kind == 4:
        return f"SET @v = {draw(scalar_subquery(0, ()))}"
    if kind <= 6:
        return draw(insert())
    if kind <= 8:
        return draw(update())
    return draw(delete())

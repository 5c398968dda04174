"""Queries and DML: SELECT in all its forms (also `TABLE t`, `VALUES`, parenthesized and WITH
queries), INSERT, REPLACE, UPDATE and DELETE (single and multi-table), and DO. Write targets need
the write privilege; every table read needs SELECT, including a target whose values are read (a
WHERE, ORDER BY or SET expression that reads columns). REPLACE needs INSERT and DELETE on its
target (MySQL's rule). An UPDATE or DELETE without a WHERE clause (or with one that reads no
column) lists its targets in `Analysis.unbounded_writes`: the decision applies the guardrail.

RETURNING (MariaDB 10.5+: INSERT, REPLACE and single-table DELETE; MariaDB has no UPDATE ...
RETURNING): the rows written come back, so the statement also reads them. MariaDB wants SELECT
on the target of an INSERT / REPLACE ... RETURNING whatever the list says (even `RETURNING 1`),
and for DELETE ... RETURNING only when the list reads a column (`RETURNING 1` needs none); every
column the list names is a SELECT column use of the target (`*` all of them), and a subquery in
it needs SELECT on what it reads. Checked against MariaDB 10.11 by the differential tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from proxy.authz import columns
from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.names import canonical_db
from proxy.authz.outcome import Denied
from proxy.authz.parse import main_keyword_after_with, parse_one, prepare, split_returning
from proxy.authz.lexer import T_LPAREN, retyped, word
from proxy.authz.walk import (
    ALIAS,
    WRITE,
    Collector,
    check_args,
    collected,
    cross_check,
    cte_names,
)

# The statement keyword -> the tree types its parse must produce (sqlglot falls back to
# `Command`, or silently to an `Alias`/`Column`, for statements it does not know).
EXPECTED_TREE: dict[str, tuple[type, ...]] = {
    "SELECT": (exp.Select, exp.SetOperation),
    "TABLE": (exp.Select, exp.SetOperation),
    "VALUES": (exp.Values, exp.Select, exp.SetOperation),  # parse.py reads it as SELECT * FROM (VALUES ...)
    "(": (exp.Select, exp.SetOperation, exp.Subquery),
    "WITH": (exp.Select, exp.SetOperation, exp.Update, exp.Delete),
    "INSERT": (exp.Insert,),
    "UPDATE": (exp.Update,),
    "DELETE": (exp.Delete,),
}

_CLASS_OF_TREE = {exp.Insert: "INSERT", exp.Update: "UPDATE", exp.Delete: "DELETE"}


def parsed_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """SELECT / WITH / ( / TABLE / VALUES / INSERT / UPDATE / DELETE: parse and analyze."""
    keyword = "(" if tokens[0].token_type is T_LPAREN else word(tokens[0])
    main = None
    if keyword == "WITH":
        main = main_keyword_after_with(tokens)
        if main == "WITH":
            raise Denied(DenyCode.PARSE_ERROR, "one WITH clause per query block")
        if main not in ("SELECT", "TABLE", "VALUES", "(", "UPDATE", "DELETE"):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT, f"WITH ... {main or '?'} is not supported"
            )
    tokens = prepare(tokens, sql.upper())
    if keyword in ("INSERT", "DELETE", "UPDATE") or main in ("UPDATE", "DELETE"):
        tree = _parse_with_returning(sql, tokens, keyword)
    else:
        tree = parse_one(sql, tokens)
    expected = EXPECTED_TREE[keyword]
    if not isinstance(tree, expected):
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            f"{keyword} statement of an unsupported form ({type(tree).__name__})",
        )
    return _analyze_dml_tree(tree, current_db)


def replace_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """REPLACE has INSERT's grammar (without ON DUPLICATE KEY UPDATE); sqlglot does not parse
    it, so it is parsed as the INSERT it spells and authorized as INSERT + DELETE."""
    tokens = prepare([retyped(tokens[0], TokenType.INSERT)] + tokens[1:], sql.upper())
    tree = _parse_with_returning(sql, tokens, "REPLACE")
    if not isinstance(tree, exp.Insert):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "REPLACE statement of an unsupported form")
    return _insert(tree, current_db, replace=True)


def _parse_with_returning(sql: str, tokens: list[Token], keyword: str) -> exp.Expr:
    """Parse an INSERT / REPLACE / UPDATE / DELETE (or WITH ...) whose RETURNING list, if any,
    is parsed apart and attached as `returning`."""
    main, returning = split_returning(tokens)
    if returning is None:
        return parse_one(sql, tokens)
    if keyword in ("UPDATE", "WITH"):
        raise Denied(
            DenyCode.PARSE_ERROR,
            "MariaDB has RETURNING only on INSERT, REPLACE and single-table DELETE",
        )
    tree = parse_one(sql, main)
    listed = parse_one(sql, returning)
    if (
        not isinstance(listed, exp.Select)
        or not listed.expressions
        or any(v not in (None, False, [], "") for k, v in listed.args.items() if k != "expressions")
    ):
        raise Denied(DenyCode.PARSE_ERROR, "RETURNING takes a select list (no FROM, INTO, ...)")
    if tree.args.get("returning") is not None:
        raise Denied(DenyCode.PARSE_ERROR, "RETURNING given twice")
    tree.set("returning", exp.Returning(expressions=listed.expressions))
    return tree


def do_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """DO expr[, expr]: evaluated like SELECT expr[, expr] without a result."""
    tokens = prepare([retyped(tokens[0], TokenType.SELECT)] + tokens[1:], sql.upper())
    if len(tokens) < 2:
        raise Denied(DenyCode.PARSE_ERROR, "DO without an expression")
    tree = parse_one(sql, tokens)
    if not isinstance(tree, exp.Select):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "DO of an unsupported form")
    check_args(tree, frozenset({"expressions"}), "DO")
    c = Collector(current_db)
    c.walk(tree)
    cross_check(tree, c)
    return collected(StatementKind.QUERY, "DO", c, column_uses=columns.of_query(tree, c.resolved))


def _analyze_dml_tree(tree: exp.Expr, current_db: str | None) -> Analysis:
    try:
        return _analyze_dml_tree_unlabelled(tree, current_db)
    except Denied as d:
        if not d.statement_class:
            d.statement_class = _CLASS_OF_TREE.get(type(tree), "")
        raise


def _analyze_dml_tree_unlabelled(tree: exp.Expr, current_db: str | None) -> Analysis:
    if isinstance(tree, exp.Insert):
        return _insert(tree, current_db)
    if isinstance(tree, exp.Update):
        return _update(tree, current_db)
    if isinstance(tree, exp.Delete):
        return _delete(tree, current_db)
    if isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)):
        return _query(tree, current_db)
    raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"unsupported statement ({type(tree).__name__})")


def _query(tree: exp.Expr, current_db: str | None) -> Analysis:
    c = Collector(current_db)
    c.walk(tree)
    cross_check(tree, c)
    return collected(
        StatementKind.QUERY, "SELECT", c, column_uses=columns.of_query(tree, c.resolved)
    )


# sqlglot cannot parse REPLACE or CALL as written, so the session cannot rewrite the
# information_schema tables inside them to show only granted objects.
METADATA_IN_COMMAND = (
    "information_schema cannot be read inside {}; read it with SELECT (or INSERT ... SELECT)"
)
_INSERT_ARGS = frozenset({"this", "expression", "conflict", "ignore", "hint", "returning"})


def _insert(tree: exp.Insert, current_db: str | None, *, replace: bool = False) -> Analysis:
    what = "REPLACE" if replace else "INSERT"
    check_args(tree, _INSERT_ARGS, what)
    target = tree.this
    if isinstance(target, exp.Schema):
        target = target.this
    if not isinstance(target, exp.Table) or isinstance(target.this, exp.Func):
        raise Denied(DenyCode.UNACCOUNTED_TABLE, f"{what} target of an unsupported form", what)
    c = Collector(current_db)
    ref = c.resolve(target, frozenset())
    if ref is None:
        raise Denied(DenyCode.UNACCOUNTED_TABLE, f"{what} target is not a table", what)
    c.roles[id(target)] = WRITE
    requirements = {Requirement(ref, Privilege.INSERT)}
    if replace:
        requirements.add(Requirement(ref, Privilege.DELETE))
    conflict = tree.args.get("conflict")
    if conflict is not None:
        if replace:
            raise Denied(DenyCode.PARSE_ERROR, "REPLACE has no ON DUPLICATE KEY UPDATE", what)
        if not isinstance(conflict, exp.OnConflict) or not conflict.args.get("duplicate"):
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "only ON DUPLICATE KEY UPDATE")
        requirements.add(Requirement(ref, Privilege.UPDATE))
    if tree.args.get("returning") is not None:
        # MariaDB checks SELECT on the target for any RETURNING list, even one of constants
        requirements.add(Requirement(ref, Privilege.SELECT))
    c.walk(tree)
    cross_check(tree, c)
    if replace and c.metadata:
        raise Denied(DenyCode.METADATA, METADATA_IN_COMMAND.format("REPLACE"), what)
    return collected(
        StatementKind.QUERY, what, c, requirements, columns.of_insert(tree, c.resolved, ref)
    )


class _Source:
    """A top-level table reference of an UPDATE or multi-table DELETE."""

    __slots__ = ("node", "ref", "name", "alias", "db")

    def __init__(self, node: exp.Expr, c: Collector, env: frozenset[str]) -> None:
        self.node = node
        self.ref: TableRef | None = None
        self.name = self.alias = ""
        self.db: str | None = None
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            self.ref = c.resolve(node, env)
            self.name = node.name
            self.db = self.ref.db if self.ref is not None else None
        self.alias = node.alias if isinstance(node, exp.Expr) else ""

    def matches(self, db: str | None, name: str) -> bool:
        """An aliased table is named by its alias only (MySQL: "Unknown table ... in MULTI
        DELETE" otherwise); names compare without case, so both of `t` and `T` match."""
        lname = name.lower()
        if self.alias:
            return db is None and self.alias.lower() == lname
        if self.name and self.name.lower() == lname:
            return db is None or self.db is None or self.db == db
        return False


def _sources(node: exp.Expr | None, c: Collector, env: frozenset[str], out: list[_Source]) -> None:
    if node is None:
        return
    if isinstance(node, exp.Join):
        _sources(node.this, c, env, out)
        return
    if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Table):
        _sources(node.this, c, env, out)  # a parenthesized join: (t1 JOIN t2)
    else:
        out.append(_Source(node, c, env))
    for join in node.args.get("joins") or []:
        _sources(join, c, env, out)


def _qualifier(column: exp.Column, c: Collector) -> tuple[str | None, str | None]:
    if column.args.get("catalog") is not None:
        raise Denied(DenyCode.SUSPICIOUS_NAME, "four-part column names are not supported")
    table = column.args.get("table")
    db = column.args.get("db")
    return (
        canonical_db(db.name) if db is not None else None,
        table.name if table is not None else None,
    )


def _reads_values(tree: exp.Expr, c: Collector, assigned_columns: int) -> bool:
    returning = tree.args.get("returning")
    return (
        tree.args.get("where") is not None
        or tree.args.get("order") is not None
        or c.columns > assigned_columns
        or (returning is not None and returning.find(exp.Star) is not None)
    )


def _unbounded(tree: exp.Expr, targets: Iterable[TableRef]) -> frozenset[TableRef]:
    """The targets of an UPDATE/DELETE that writes every row: no WHERE clause, or one that
    reads no column at all (`WHERE 1`, `WHERE 1 = 1`). A LIMIT does not bound it. A guardrail
    against mistakes, not a security boundary: `WHERE id = id` is not caught."""
    where = tree.args.get("where")
    if where is not None:
        cond = where.this
        if isinstance(cond, exp.Binary) and (
            type(cond.this) is exp.Column or type(cond.expression) is exp.Column
        ):
            return frozenset()  # the common `col = value`, without a walk
        if where.find(exp.Column) is not None:
            return frozenset()
    return frozenset(targets)


_UPDATE_ARGS = frozenset({"this", "expressions", "where", "order", "limit", "with_", "hint"})


def _update(tree: exp.Update, current_db: str | None) -> Analysis:
    check_args(tree, _UPDATE_ARGS, "UPDATE")
    c = Collector(current_db)
    env = cte_names(tree.args.get("with_"))
    sources: list[_Source] = []
    _sources(tree.this, c, env, sources)
    real = [s for s in sources if s.ref is not None]
    targets: dict[int, TableRef] = {}
    assignments = tree.expressions
    if not assignments:
        raise Denied(DenyCode.PARSE_ERROR, "UPDATE without SET")
    for eq in assignments:
        if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "UPDATE ... SET of an unsupported form")
        db, table = _qualifier(eq.this, c)
        if table is None:
            matched = real if len(sources) > 1 else sources
        else:
            matched = [s for s in sources if s.matches(db, table)]
        for s in _base_tables(matched, f"SET {table}.{eq.this.name}", "updated"):
            targets[id(s.node)] = s.ref
    for nid, ref in targets.items():
        c.roles[nid] = WRITE
        c.resolved[nid] = ref
    return _write(tree, c, list(targets.values()), Privilege.UPDATE, len(assignments), columns.of_update)


_DELETE_ARGS = frozenset(
    {"this", "using", "where", "order", "limit", "tables", "with_", "hint", "returning"}
)


def _delete(tree: exp.Delete, current_db: str | None) -> Analysis:
    check_args(tree, _DELETE_ARGS, "DELETE")
    c = Collector(current_db)
    env = cte_names(tree.args.get("with_"))
    named = tree.args.get("tables")
    using = tree.args.get("using")
    if tree.args.get("returning") is not None and (named or using or tree.args.get("with_")):
        raise Denied(DenyCode.PARSE_ERROR, "MariaDB has DELETE ... RETURNING on one table only")
    target_refs: list[TableRef] = []
    if not named and not using:
        target = tree.this
        if not isinstance(target, exp.Table) or target.args.get("joins"):
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "DELETE of an unsupported form")
        ref = c.resolve(target, env)
        if ref is None:
            raise Denied(DenyCode.UNACCOUNTED_TABLE, "DELETE target is not a table")
        c.roles[id(target)] = WRITE
        c.resolved[id(target)] = ref
        target_refs.append(ref)
    else:
        sources: list[_Source] = []
        names: list[exp.Expr] = []
        if using:
            for u in using:
                _sources(u, c, env, sources)
            names = _flatten_tables(tree.this)
        else:
            _sources(tree.this, c, env, sources)
            names = list(named)
        for name_node in names:
            if not isinstance(name_node, exp.Table) or not isinstance(
                name_node.this, exp.Identifier
            ):
                raise Denied(DenyCode.UNACCOUNTED_TABLE, "DELETE target of an unsupported form")
            c.roles[id(name_node)] = ALIAS
            db_node = name_node.args.get("db")
            db = canonical_db(db_node.name) if db_node is not None else None
            matched = [s for s in sources if s.matches(db, name_node.name)]
            for s in _base_tables(matched, f"DELETE target {name_node.name}", "deleted from"):
                assert s.ref is not None
                c.roles[id(s.node)] = WRITE
                c.resolved[id(s.node)] = s.ref
                target_refs.append(s.ref)
    return _write(tree, c, target_refs, Privilege.DELETE, 0, columns.of_delete)


def _base_tables(matched: list[_Source], what: str, verb: str) -> list[_Source]:
    """The write targets a name matched: at least one, and every one a real table."""
    if not matched:
        raise Denied(DenyCode.UNACCOUNTED_TABLE, f"{what} names no table of the statement")
    if any(s.ref is None for s in matched):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"only base tables can be {verb}")
    return matched


def _write(
    tree: exp.Expr,
    c: Collector,
    targets: list[TableRef],
    privilege: Privilege,
    assigned_columns: int,
    column_uses: Callable[[Any, dict[int, TableRef | None]], columns.ColumnUses | None],
) -> Analysis:
    """UPDATE / DELETE once their targets are marked: walk, cross-check, and require the write
    privilege on each target (and SELECT where the statement reads stored values)."""
    c.walk(tree)
    cross_check(tree, c)
    reads_values = _reads_values(tree, c, assigned_columns)
    requirements = set()
    for ref in targets:
        requirements.add(Requirement(ref, privilege))
        if reads_values:
            requirements.add(Requirement(ref, Privilege.SELECT))
    return collected(
        StatementKind.QUERY,
        privilege.value,
        c,
        requirements,
        column_uses(tree, c.resolved),
        unbounded_writes=_unbounded(tree, targets),
    )


def _flatten_tables(node: exp.Expr | None) -> list[exp.Expr]:
    """`DELETE FROM a, b USING ...`: sqlglot puts the target list in `this` as a join chain."""
    if node is None:
        return []
    out: list[exp.Expr] = [node]
    for join in node.args.get("joins") or []:
        if not isinstance(join, exp.Join) or join.args.get("on") or join.args.get("using"):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT, "DELETE target list of an unsupported form"
            )
        out += _flatten_tables(join.this)
    return out

"""Column uses: which columns of which real tables a statement reads or writes, for grants that
name columns (`Grant.columns`). Run after the walk (walk.py), on the same tree, with the table
resolutions the walk recorded (`Collector.resolved`), so both always agree on what is a table.

A column use is (table, lower-case column name, privilege): SELECT for every column read
anywhere (projection, WHERE, JOIN ON, GROUP BY, HAVING, ORDER BY, windows, function arguments,
subqueries), UPDATE for an UPDATE's SET targets and ON DUPLICATE KEY UPDATE targets, INSERT for
an INSERT's column list. A "star" is a `Requirement` whose columns are not known by name:
`SELECT *`, `t.*`, `TABLE t`, NATURAL JOIN, INSERT without a column list.

The rules are conservative (more uses are a false denial at worst; fewer would be a leak):
- an unqualified column counts on every real table of its query block *and of every enclosing
  block* (it may be an outer reference: without the schema we cannot tell);
- a qualified column `q.c` counts on the tables named (or aliased) `q`, compared without case,
  in every block in reach; if no block has one, on every real table of the statement;
- a derived table or CTE contributes no columns itself: every column its body uses is counted
  where it is written, so `SELECT x FROM (SELECT salary AS x FROM t) d` uses t.salary;
- USING (c) counts c on every real table of the block; NATURAL JOIN is a star on all of them;
- a bare ORDER BY name that is a projection alias of the same block is the alias (MySQL looks
  in the select list first for ORDER BY; for GROUP BY and HAVING it looks at the tables first,
  so there an alias name also counts as a column);
- anything of a form this module has no branch for makes the whole statement a star on every
  table it needs (`None` from the entry points): column-restricted grants then deny it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlglot import exp

from proxy.authz.functions import SEQUENCE_FUNCTIONS
from proxy.authz.model import Privilege, Requirement, TableRef
from proxy.authz.names import INFORMATION_SCHEMA

ColumnUse = tuple[TableRef, str, Privilege]

_SELECT = Privilege.SELECT
_QUERIES = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)
_MISSING = object()


@dataclass
class ColumnUses:
    uses: set[ColumnUse] = field(default_factory=set)
    stars: set[Requirement] = field(default_factory=set)


class _Unknown(Exception):
    """A form without a branch: fall back to a star on everything."""


class _Scope:
    """One query block: its FROM sources as (name, table name, real table or None)."""

    __slots__ = ("parent", "sources")

    def __init__(self, parent: _Scope | None) -> None:
        self.parent = parent
        self.sources: list[tuple[str, str, TableRef | None]] = []

    def real(self) -> list[TableRef]:
        return [r for _, _, r in self.sources if r is not None]

    def chain(self) -> Iterable[_Scope]:
        s: _Scope | None = self
        while s is not None:
            yield s
            s = s.parent


class _Pass:
    def __init__(self, resolved: dict[int, TableRef | None]) -> None:
        self.resolved = resolved
        self.out = ColumnUses()
        self.scopes: list[_Scope] = []
        # qualified columns whose qualifier names no source in reach: (column or None for
        # `q.*`, privilege), counted on every real table of the statement once all are known
        self.unplaced: list[tuple[str | None, Privilege]] = []

    def scope(self, parent: _Scope | None) -> _Scope:
        s = _Scope(parent)
        self.scopes.append(s)
        return s

    # -- query blocks ------------------------------------------------------------------------

    def query(self, node: exp.Expr, parent: _Scope | None) -> None:
        with_ = node.args.get("with_")
        if with_ is not None:
            self.ctes(with_, parent)
        if isinstance(node, exp.Select):
            self.select(node, parent)
        elif isinstance(node, exp.SetOperation):
            self.query(node.this, parent)
            self.query(node.expression, parent)
            self.rest(node, self.scope(parent), ("this", "expression", "with_"))
        elif isinstance(node, exp.Subquery):
            self.query(node.this, parent)
            self.rest(node, self.scope(parent), ("this", "alias"))
        elif isinstance(node, exp.Values):
            self.rest(node, self.scope(parent), ("alias",))
        else:
            raise _Unknown(type(node).__name__)

    def ctes(self, with_: exp.Expr, parent: _Scope | None) -> None:
        if not isinstance(with_, exp.With):
            raise _Unknown("with")
        for cte in with_.expressions:
            self.query(cte.this, parent)

    def select(self, node: exp.Select, parent: _Scope | None) -> None:
        scope = self.scope(parent)
        joins: list[exp.Join] = []
        from_ = node.args.get("from_")
        if from_ is not None:
            if from_.args.get("expressions"):
                raise _Unknown("from list")
            self.source(from_.this, scope, joins)
        for join in node.args.get("joins") or []:
            self.join(join, scope, joins)
        self.join_conditions(joins, scope)
        aliases = {
            e.alias.lower() for e in node.expressions if isinstance(e, exp.Alias) and e.alias
        }
        order = node.args.get("order")
        if order is not None:
            for item in order.expressions:
                inner = item.this if isinstance(item, exp.Ordered) else item
                if (
                    type(inner) is exp.Column
                    and inner.args.get("table") is None
                    and isinstance(inner.this, exp.Identifier)
                    and inner.name.lower() in aliases
                ):
                    continue
                self.visit(item, scope)
        self.rest(node, scope, ("with_", "from_", "joins", "order", "hint", "locks"))

    def rest(self, node: exp.Expr, scope: _Scope, skip: tuple[str, ...]) -> None:
        for key, value in node.args.items():
            if key in skip or value is None:
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, exp.Expr):
                    self.visit(item, scope)

    # -- sources -----------------------------------------------------------------------------

    def join(self, join: exp.Expr, scope: _Scope, joins: list[exp.Join]) -> None:
        if not isinstance(join, exp.Join):
            raise _Unknown("join")
        self.source(join.this, scope, joins)
        joins.append(join)

    def join_conditions(self, joins: list[exp.Join], scope: _Scope) -> None:
        for join in joins:
            method = (join.args.get("method") or "").upper()
            if method == "NATURAL":
                self.star_all(scope.real())
            for ident in join.args.get("using") or []:
                name = ident.name if isinstance(ident, (exp.Identifier, exp.Column)) else None
                if not name:
                    raise _Unknown("using")
                for ref in scope.real():
                    self.use(ref, name, _SELECT)
            self.rest(join, scope, ("this", "using", "method", "side", "kind", "hint"))

    def source(self, src: exp.Expr, scope: _Scope, joins: list[exp.Join]) -> None:
        if isinstance(src, exp.Table):
            this = src.this
            if isinstance(this, exp.JSONTable):
                self.visit(this, scope)  # its document expression may read earlier sources
                scope.sources.append((src.alias.lower(), "", None))
            else:
                ref = self.resolved.get(id(src), _MISSING)
                if ref is _MISSING:
                    raise _Unknown("unresolved table")
                real = ref if isinstance(ref, TableRef) and ref.db != INFORMATION_SCHEMA else None
                scope.sources.append((src.alias_or_name.lower(), src.name.lower(), real))
            for join in src.args.get("joins") or []:
                self.join(join, scope, joins)
            return
        if isinstance(src, exp.Subquery):
            if isinstance(src.this, (exp.Table, exp.Subquery)):  # (t1 JOIN t2 ON ...), ((t))
                self.source(src.this, scope, joins)
            else:  # a derived table: it sees outer blocks, not its siblings (no LATERAL)
                self.query(src.this, scope.parent)
                scope.sources.append((src.alias.lower(), "", None))
            for join in src.args.get("joins") or []:
                self.join(join, scope, joins)
            return
        if isinstance(src, exp.Lateral) and isinstance(src.this, exp.Subquery):
            self.query(src.this.this, scope)  # LATERAL sees the sources before it
            scope.sources.append((src.alias.lower(), "", None))
            return
        if isinstance(src, exp.Values):
            self.query(src, scope.parent)
            scope.sources.append((src.alias.lower(), "", None))
            return
        raise _Unknown(type(src).__name__)

    # -- expressions -------------------------------------------------------------------------

    def visit(self, root: exp.Expr, scope: _Scope) -> None:
        stack = [root]
        while stack:
            node = stack.pop()
            if isinstance(node, exp.Column):
                self.column(node, scope, _SELECT)
                continue
            if isinstance(node, exp.Star):
                if not isinstance(node.parent, exp.Count):
                    self.star_all(scope.real())
                continue
            if node is not root and isinstance(node, _QUERIES):
                self.query(node, scope)
                continue
            if isinstance(node, exp.Table):
                raise _Unknown("table in an expression")
            if isinstance(node, exp.Hint):
                continue
            if (
                type(node) is exp.Anonymous
                and isinstance(node.this, str)
                and node.this.upper() in SEQUENCE_FUNCTIONS
            ):
                continue  # NEXTVAL(s): s names a sequence (walk.py), not a column
            for value in node.args.values():
                if isinstance(value, list):
                    stack.extend(v for v in value if isinstance(v, exp.Expr))
                elif isinstance(value, exp.Expr):
                    stack.append(value)

    def column(self, col: exp.Column, scope: _Scope, privilege: Privilege) -> None:
        if col.args.get("catalog") is not None:
            raise _Unknown("four-part column")
        star = isinstance(col.this, exp.Star)
        if not star and not isinstance(col.this, exp.Identifier):
            raise _Unknown("column")
        candidates = self.candidates(col, scope)
        if candidates is None:
            self.unplaced.append((None if star else col.name, privilege))
            return
        for ref in candidates:
            self.place(ref, None if star else col.name, privilege)

    def place(self, ref: TableRef, name: str | None, privilege: Privilege) -> None:
        if name is None:
            self.out.stars.add(Requirement(ref, privilege))
        else:
            self.use(ref, name, privilege)

    def candidates(self, col: exp.Column, scope: _Scope) -> list[TableRef] | None:
        """The real tables `col` may belong to; None when its qualifier names no source.

        Names compare case-insensitively and every block in reach that has the qualifier
        counts (not only the innermost): an inner alias `E` must not hide an outer `e` that
        the server, comparing aliases case-sensitively, would pick."""
        table = col.args.get("table")
        if table is None:
            return [ref for s in scope.chain() for ref in s.real()]
        qualifier = table.name.lower()
        db_node = col.args.get("db")
        db = db_node.name.lower() if db_node is not None else None
        found = False
        out: list[TableRef] = []
        for s in scope.chain():
            for name, table_name, ref in s.sources:
                if db is None:
                    hit = name == qualifier
                else:
                    hit = ref is not None and table_name == qualifier and ref.db.lower() == db
                if hit:
                    found = True
                    if ref is not None:
                        out.append(ref)
        return out if found else None

    def finish(self) -> None:
        everything = [ref for s in self.scopes for ref in s.real()]
        for name, privilege in self.unplaced:
            for ref in everything:
                self.place(ref, name, privilege)

    def use(self, ref: TableRef, name: str, privilege: Privilege) -> None:
        self.out.uses.add((ref, name.lower(), privilege))

    def star_all(self, refs: Iterable[TableRef], privilege: Privilege = _SELECT) -> None:
        for ref in refs:
            self.out.stars.add(Requirement(ref, privilege))


def _run(resolved: dict[int, TableRef | None], body: Callable[[_Pass], None]) -> ColumnUses | None:
    p = _Pass(resolved)
    try:
        body(p)
        p.finish()
    except Exception:  # noqa: BLE001 - _Unknown or a defect: a star on everything (fail closed)
        return None
    return p.out


def of_query(tree: exp.Expr, resolved: dict[int, TableRef | None]) -> ColumnUses | None:
    """SELECT in all its forms, VALUES, DO."""
    return _run(resolved, lambda p: p.query(tree, None))


def of_set(tree: exp.Set, resolved: dict[int, TableRef | None]) -> ColumnUses | None:
    """SET a = expr, ...: the values, read like a select list without FROM (a column there can
    only be an outer reference of nothing, so only subqueries use columns)."""

    def body(p: _Pass) -> None:
        scope = p.scope(None)
        for item in tree.expressions:
            assignment = item.this if isinstance(item, exp.SetItem) else None
            if isinstance(assignment, (exp.EQ, exp.PropertyEQ)):
                p.visit(assignment.expression, scope)
            elif item.args.get("kind") not in ("NAMES", "CHARACTER SET"):
                raise _Unknown("set item")

    return _run(resolved, body)


def of_insert(
    tree: exp.Insert, resolved: dict[int, TableRef | None], target: TableRef
) -> ColumnUses | None:
    """INSERT / REPLACE: INSERT on the listed columns (a star without a list), the source query
    or VALUES as a query, ON DUPLICATE KEY UPDATE as SET targets (UPDATE) reading the target."""

    def body(p: _Pass) -> None:
        schema = tree.this
        if isinstance(schema, exp.Schema):
            for ident in schema.expressions:
                if not isinstance(ident, exp.Identifier) or not ident.this:
                    raise _Unknown("insert column")
                p.use(target, ident.this, Privilege.INSERT)
        else:
            p.out.stars.add(Requirement(target, Privilege.INSERT))
        source = tree.expression
        if source is not None:
            # VALUES may name columns of the row being inserted, never stored values: no scope.
            if isinstance(source, _QUERIES):
                p.query(source, None)
            else:
                p.visit(source, p.scope(None))
        conflict = tree.args.get("conflict")
        if conflict is not None:
            scope = p.scope(None)
            scope.sources.append(("", "", target))
            _assignments(p, conflict.expressions, scope)
        returning = tree.args.get("returning")
        if returning is not None:
            # RETURNING reads the rows written: the target's columns, by its name
            target_node = schema.this if isinstance(schema, exp.Schema) else schema
            name = target_node.name.lower() if isinstance(target_node, exp.Table) else ""
            scope = p.scope(None)
            scope.sources.append((name, name, target))
            for item in returning.expressions:
                p.visit(item, scope)

    return _run(resolved, body)


def of_update(tree: exp.Update, resolved: dict[int, TableRef | None]) -> ColumnUses | None:
    def body(p: _Pass) -> None:
        scope = _write_scope(p, tree, [tree.this])
        _assignments(p, tree.expressions, scope)
        p.rest(tree, scope, ("this", "expressions", "with_", "hint"))

    return _run(resolved, body)


def of_delete(tree: exp.Delete, resolved: dict[int, TableRef | None]) -> ColumnUses | None:
    def body(p: _Pass) -> None:
        # With USING, `this` is the target list: names, not columns.
        scope = _write_scope(p, tree, tree.args.get("using") or [tree.this])
        p.rest(tree, scope, ("this", "using", "tables", "with_", "hint"))

    return _run(resolved, body)


def _write_scope(p: _Pass, tree: exp.Expr, sources: list[exp.Expr]) -> _Scope:
    """The one query block of an UPDATE / DELETE: its CTEs, its sources and their joins."""
    with_ = tree.args.get("with_")
    if with_ is not None:
        p.ctes(with_, None)
    scope = p.scope(None)
    joins: list[exp.Join] = []
    for src in sources:
        p.source(src, scope, joins)
    p.join_conditions(joins, scope)
    return scope


def _assignments(p: _Pass, assignments: list[exp.Expr], scope: _Scope) -> None:
    for eq in assignments:
        if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
            raise _Unknown("assignment")
        p.column(eq.this, scope, Privilege.UPDATE)
        p.visit(eq.expression, scope)

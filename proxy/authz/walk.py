"""The tree walk: one pass over a parsed statement that resolves every table reference with
MySQL's CTE visibility rules, checks every function call, and collects the real tables read
(information_schema tables apart: they need no grant, and `collected` lists them as
`metadata_tables` for the session to restrict).

A CTE is visible in its WITH clause's statement and to later CTEs of the same clause; to itself
only under RECURSIVE; names compare case-sensitively. Statement handlers mark write targets and
alias references (`roles`) before the walk; `cross_check` then requires that every `exp.Table`
in the tree was classified by the walk: an unaccounted table is a deny.

CTE resolution is our own walk rather than `sqlglot.optimizer.qualify_tables`: the latter
rewrites the tree, costs about as much as parsing (≈120 µs for a 3-join SELECT) and does not see
DML targets; the test suite checks the two agree on real tables (tests/authz).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlglot import exp

from proxy.authz import functions, infoschema
from proxy.authz.columns import ColumnUses
from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.names import (
    INFORMATION_SCHEMA,
    canonical_routine,
    canonical_table,
    looks_like_information_schema,
)
from proxy.authz.outcome import Denied, result
from proxy.authz.parse import MODIFIER_WORDS

_TREE_CHECKED_FUNCS = tuple(getattr(exp, n) for n in sorted(functions.TREE_CHECKED_CLASS_NAMES))
_DENIED_FUNC_CLASSES = (exp.NextValueFor,)
_ANONYMOUS = (exp.Anonymous, exp.AnonymousAggFunc)

READ, WRITE, ALIAS = 0, 1, 2
_SELECT = Privilege.SELECT
# Node types with no expression below them (a Column holds only identifiers).
_LEAVES = frozenset(
    {exp.Identifier, exp.Literal, exp.Var, exp.Star, exp.Null, exp.Boolean, exp.Placeholder}
)


class Collector:
    """One walk over a statement tree: table resolution, function checks, reads."""

    __slots__ = (
        "current_db", "reads", "metadata", "roles", "accounted", "columns", "resolved", "executes",
        "sequences",
    )

    def __init__(self, current_db: str | None) -> None:
        self.current_db = current_db
        self.reads: set[TableRef] = set()
        self.metadata: set[str] = set()  # information_schema tables read (lower case)
        self.roles: dict[int, int] = {}  # id(exp.Table) -> WRITE / ALIAS, set by handlers
        self.accounted: set[int] = set()
        self.columns = 0  # exp.Column nodes seen (does the statement read column values?)
        # id(exp.Table) -> what it names (None: a CTE or DUAL), for the column pass (columns.py);
        # the walk fills it for tables read, handlers for the targets they resolve.
        self.resolved: dict[int, TableRef | None] = {}
        self.executes: set[TableRef] = set()  # stored functions called as db.fn(...)
        # MariaDB sequence functions: what they need on their sequence (NEXTVAL: SELECT and
        # INSERT, LASTVAL: SELECT, SETVAL: INSERT; NEXT / PREVIOUS VALUE FOR are rewritten to
        # NEXTVAL / LASTVAL by parse.py), and the first one called, for Analysis.mariadb_only
        self.sequences: dict[Requirement, str] = {}

    def resolve(self, node: exp.Table, env: frozenset[str]) -> TableRef | None:
        """The real table `node` names; None for a CTE reference or DUAL."""
        this = node.this
        if not isinstance(this, exp.Identifier):
            raise Denied(DenyCode.UNACCOUNTED_TABLE, "a table reference of an unsupported form")
        if node.args.get("catalog") is not None:
            raise Denied(DenyCode.SUSPICIOUS_NAME, "three-part table names are not supported")
        name = this.this
        if not isinstance(name, str):
            raise Denied(DenyCode.UNACCOUNTED_TABLE, "a table reference of an unsupported form")
        db = node.args.get("db")
        if db is None:
            if not this.args.get("quoted"):
                upper = name.upper()
                if upper == "DUAL":
                    return None
                if upper in functions.MYSQL_RESERVED or upper in MODIFIER_WORDS:
                    raise Denied(
                        DenyCode.SUSPICIOUS_NAME,
                        f"a table named like the keyword {upper} must be backquoted",
                    )
            if name in env:
                return None
            if self.current_db is None:
                raise Denied(
                    DenyCode.NO_DATABASE,
                    f"no database selected for table {name}; use db.table or USE db",
                )
            return table_ref(self.current_db, name)
        if not isinstance(db, exp.Identifier) or not isinstance(db.this, str):
            raise Denied(DenyCode.UNACCOUNTED_TABLE, "a table reference of an unsupported form")
        return table_ref(db.this, name)

    def walk(self, root: exp.Expr, env: frozenset[str] = frozenset()) -> None:
        stack: list[tuple[exp.Expr, frozenset[str]]] = [(root, env)]
        push = stack.append
        pop = stack.pop
        expr_type = exp.Expr
        while stack:
            node, env = pop()
            kind = type(node)
            if kind in _LEAVES:
                continue
            if kind is exp.Table:
                self._table(node, env, push)
                continue
            if kind is exp.Column:
                self.columns += 1  # only identifiers below
                continue
            if kind is exp.Hint:
                # Optimizer hints are read by MySQL's hint parser, never run as SQL; sqlglot
                # sometimes parses `INDEX(t idx)` inside them into tables or calls.
                for inner in node.find_all(exp.Table):
                    self.accounted.add(id(inner))
                continue
            if isinstance(node, exp.Func):
                if kind is exp.Anonymous and self._sequence(node):
                    continue  # its argument names a sequence, not a column
                self._function(node)
            elif kind is exp.Dot:
                if isinstance(node.this, exp.Func) or isinstance(node.expression, exp.Func):
                    # db.fn(...) always names a stored function, which runs with its definer's
                    # rights: it needs EXECUTE on that routine; its arguments are walked as usual.
                    self.executes.add(_stored_function(node))
                    for arg in node.expression.expressions:
                        push((arg, env))
                    continue
            elif kind is exp.Into:
                raise Denied(DenyCode.SELECT_INTO, "SELECT ... INTO is not allowed")
            elif kind is exp.Command:
                raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "unsupported statement")
            args = node.args
            with_ = args.get("with_")
            if with_ is not None:
                env = self._with(with_, env, push)
            if kind is exp.Select and args.get("locks"):
                self._locks(node)
            for key, value in args.items():
                if value is None or value is with_:
                    continue
                if type(value) is list:
                    for item in value:
                        if isinstance(item, expr_type):
                            push((item, env))
                elif isinstance(value, expr_type):
                    push((value, env))

    def _table(
        self,
        node: exp.Table,
        env: frozenset[str],
        push: Callable[[tuple[exp.Expr, frozenset[str]]], None],
    ) -> None:
        self.accounted.add(id(node))
        role = self.roles.get(id(node), READ)
        this = node.this
        if isinstance(this, exp.Func):
            if not isinstance(this, exp.JSONTable):
                raise Denied(DenyCode.UNKNOWN_FUNCTION, "table functions other than JSON_TABLE")
            if role != READ or node.args.get("db") is not None:
                raise Denied(DenyCode.UNACCOUNTED_TABLE, "JSON_TABLE in an unsupported place")
        elif role == READ:
            ref = self.resolve(node, env)
            self.resolved[id(node)] = ref
            if ref is not None:
                if ref.db == INFORMATION_SCHEMA:
                    self.metadata.add(infoschema.readable(ref.table or ""))
                else:
                    self.reads.add(ref)
        for key, value in node.args.items():
            if value is None or key in ("db", "catalog"):
                continue
            if key == "this" and not isinstance(this, exp.Func):
                continue
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, exp.Expr):
                        push((item, env))
            elif isinstance(value, exp.Expr):
                push((value, env))

    def _function(self, node: exp.Func) -> None:
        if isinstance(node, _ANONYMOUS):
            name = node.this
            if isinstance(name, exp.Identifier):
                if name.args.get("quoted"):
                    raise Denied(
                        DenyCode.UNKNOWN_FUNCTION,
                        f"a backquoted function name ({name.this}) calls a stored function",
                    )
                name = name.this
            if not isinstance(name, str):
                raise Denied(DenyCode.UNKNOWN_FUNCTION, "a function call of an unsupported form")
            verdict = functions.check_call_name(name)
            if verdict is not None:
                raise Denied(*verdict)
        elif isinstance(node, _TREE_CHECKED_FUNCS):
            raise Denied(
                DenyCode.UNKNOWN_FUNCTION,
                f"function {type(node).__name__.upper()} is not a MySQL built-in",
            )
        elif isinstance(node, _DENIED_FUNC_CLASSES):
            raise Denied(DenyCode.DENIED_FUNCTION, "sequence functions are not allowed")

    def _sequence(self, node: exp.Anonymous) -> bool:
        """A MariaDB sequence function, `NEXTVAL(s)`, `LASTVAL(db.s)`, `SETVAL(s, n [, used
        [, round]])` (unquoted name: a backquoted one calls a stored function): its privileges
        on the sequence. False if `node` is another call."""
        name = node.this
        if not isinstance(name, str) or name.upper() not in functions.SEQUENCE_FUNCTIONS:
            return False
        function = name.upper()
        args = node.expressions
        arity = (2, 4) if function == "SETVAL" else (1, 1)
        if not arity[0] <= len(args) <= arity[1]:
            raise Denied(DenyCode.PARSE_ERROR, f"{function} takes a sequence name" + (
                " and 1 to 3 numbers" if function == "SETVAL" else ""))
        column = args[0]
        if (
            not isinstance(column, exp.Column)
            or not isinstance(column.this, exp.Identifier)
            or column.args.get("db") is not None
            or column.args.get("catalog") is not None
        ):
            raise Denied(
                DenyCode.PARSE_ERROR, f"{function} takes a sequence name (db.name or name)"
            )
        for arg in args[1:]:
            if not _constant(arg):
                raise Denied(
                    DenyCode.PARSE_ERROR, f"{function} takes constants after the name"
                )
        table = exp.Table(this=column.this.copy())
        qualifier = column.args.get("table")
        if qualifier is not None:
            table.set("db", qualifier.copy())
        ref = self.resolve(table, frozenset())  # a sequence is never a CTE
        if ref is None:
            raise Denied(DenyCode.PARSE_ERROR, f"{function} of DUAL")
        for privilege in _SEQUENCE_PRIVILEGES[function]:
            self.sequences.setdefault(Requirement(ref, privilege), f"{function}()")
        return True

    def _with(
        self,
        with_: exp.Expr,
        env: frozenset[str],
        push: Callable[[tuple[exp.Expr, frozenset[str]]], None],
    ) -> frozenset[str]:
        if not isinstance(with_, exp.With):
            raise Denied(DenyCode.UNACCOUNTED_TABLE, "a WITH clause of an unsupported form")
        recursive = bool(with_.args.get("recursive"))
        visible = env
        for cte in with_.expressions:
            name = _cte_name(cte)
            if isinstance(cte.this, exp.Expr) and cte.this.find(exp.With) is not None:
                # A WITH nested in a CTE body crashes MariaDB 10.11 (SIGSEGV, found by the
                # differential tests): one SELECT grant would be enough to take the shared
                # database down. No ordinary query needs it: move the inner CTEs up.
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    "a WITH clause inside a CTE body is not supported; define all CTEs in the outer WITH",
                )
            push((cte.this, visible | {name} if recursive else visible))
            visible = visible | {name}
        return visible

    def _locks(self, select: exp.Select) -> None:
        """`FOR UPDATE OF a`: `a` names a table or alias of this query block, not a table."""
        names = set()
        from_ = select.args.get("from_")
        sources = [from_.this] if from_ is not None else []
        sources += [j.this for j in select.args.get("joins") or []]
        for src in sources:
            if isinstance(src, exp.Expr):
                names.add(src.alias_or_name)
        for lock in select.args.get("locks") or []:
            for t in lock.expressions:
                if (
                    isinstance(t, exp.Table)
                    and t.args.get("db") is None
                    and t.name in names
                ):
                    self.roles[id(t)] = ALIAS


_SEQUENCE_PRIVILEGES = {
    "NEXTVAL": (Privilege.SELECT, Privilege.INSERT),
    "LASTVAL": (Privilege.SELECT,),
    "SETVAL": (Privilege.INSERT,),
}


def _constant(node: exp.Expr) -> bool:
    """A number, possibly negated, or a boolean. Any number: the analysis cache shares one
    analysis among statements whose numbers differ (authz/fingerprint.py), so what is allowed
    must not depend on which number (the server refuses one SETVAL cannot take)."""
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Boolean) or (isinstance(node, exp.Literal) and not node.is_string)


def _cte_name(cte: exp.Expr) -> str:
    alias = cte.args.get("alias") if isinstance(cte, exp.CTE) else None
    ident = alias.this if isinstance(alias, exp.TableAlias) else None
    if not isinstance(ident, exp.Identifier) or not isinstance(ident.this, str) or not ident.this:
        raise Denied(DenyCode.UNACCOUNTED_TABLE, "a CTE of an unsupported form")
    return ident.this


def cte_names(with_: exp.Expr | None) -> frozenset[str]:
    if with_ is None:
        return frozenset()
    if not isinstance(with_, exp.With):
        raise Denied(DenyCode.UNACCOUNTED_TABLE, "a WITH clause of an unsupported form")
    return frozenset(_cte_name(cte) for cte in with_.expressions)


def table_ref(db: str, table: str) -> TableRef:
    if not table or not db or table != table.rstrip() or db != db.rstrip():
        raise Denied(DenyCode.SUSPICIOUS_NAME, "empty names or names ending in a space")
    if not db.isascii() and looks_like_information_schema(db):
        raise Denied(
            DenyCode.SUSPICIOUS_NAME, f"the database name {db} reads like information_schema"
        )
    return canonical_table(db, table)


def cross_check(tree: exp.Expr, c: Collector) -> None:
    for node in tree.find_all(exp.Table):
        if id(node) not in c.accounted:
            raise Denied(
                DenyCode.UNACCOUNTED_TABLE, f"table {node.name or '?'} could not be accounted for"
            )


def check_args(node: exp.Expr, allowed: frozenset[str], what: str) -> None:
    for key, value in node.args.items():
        if key not in allowed and value not in (None, False, [], ""):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"{what} with {key.rstrip('_').upper()} is not supported",
            )


def _stored_function(node: exp.Dot) -> TableRef:
    """`db.fn(...)` → the routine it calls. Only an unquoted or backquoted database name and an
    anonymous call: anything else (a.b.fn(), a typed function after a dot) is refused."""
    db, call = node.this, node.expression
    if not (isinstance(db, exp.Identifier) and isinstance(db.this, str) and isinstance(call, exp.Anonymous)):
        raise Denied(DenyCode.UNKNOWN_FUNCTION, "a qualified function call of an unsupported form")
    name = call.this.this if isinstance(call.this, exp.Identifier) else call.this
    if not isinstance(name, str) or not name or not name.isascii() or not db.this:
        raise Denied(DenyCode.UNKNOWN_FUNCTION, "a stored function name must be plain ASCII")
    if looks_like_information_schema(db.this) or db.this.lower() == INFORMATION_SCHEMA:
        raise Denied(DenyCode.SUSPICIOUS_NAME, "a stored function in information_schema")
    return canonical_routine(db.this, name)


def collected(
    kind: StatementKind,
    statement_class: str,
    c: Collector,
    requirements: Iterable[Requirement] = (),
    column_uses: ColumnUses | None = None,
    **extra: object,
) -> Analysis:
    """The result of a walked statement: `requirements` plus SELECT on every table the walk saw
    read, and the information_schema tables it read. Every handler that walks ends here, so none
    can drop what the walk found. Without `column_uses` (a handler that does not compute them,
    or a form columns.py has no branch for) every requirement is a star use: column-restricted
    grants deny it."""
    reqs = {Requirement(ref, _SELECT) for ref in c.reads}
    reqs.update(Requirement(ref, Privilege.EXECUTE) for ref in c.executes)
    if c.sequences:
        reqs.update(c.sequences)
        extra["mariadb_only"] = min(c.sequences.values())
    if requirements:
        reqs.update(requirements)
    if c.metadata:
        extra["metadata_tables"] = frozenset(c.metadata)
    if column_uses is None:
        extra["star_tables"] = frozenset(r for r in reqs if r.target.db != INFORMATION_SCHEMA)
    else:
        extra["columns"] = frozenset(column_uses.uses)
        # a sequence function uses the whole sequence: a column-restricted grant does not do
        extra["star_tables"] = frozenset(column_uses.stars) | frozenset(c.sequences)
    return result(kind, statement_class, reqs, **extra)


def resolve_named(db: str | None, table: str, current_db: str | None) -> TableRef:
    """A table named in a token-grammar statement (SHOW COLUMNS FROM t, DESCRIBE db.t)."""
    if db is None:
        if current_db is None:
            raise Denied(
                DenyCode.NO_DATABASE, f"no database selected for table {table}; use db.table"
            )
        db = current_db
    return table_ref(db, table)

"""Views: read as the tables their definitions read, created and dropped with MySQL's privileges.

A view runs upstream with its definer's rights, and the definer of every view the proxy sees is
the shared account (or whoever created it on the server). Read as a name alone, a view would
widen access: a grant on `hr_test.*` would read `hr_test.v`, defined as a SELECT of
`hr_prod.salary`. So a statement naming a view needs what MySQL asks (the privilege on the view
itself) *and* what the view's definition needs, as if the person ran it (`expand`): SELECT on
every table and column the definition reads, through nested views too. Writing through a view
(INSERT / UPDATE / DELETE on an updatable view) needs the same write privilege on every table its
definition reads: stricter than MySQL, which maps the view's columns to one base table, and
never wider. Masked columns are never read through a view (decide.py refuses it): the masks
rewrite a select list by the columns it names, and a view renames them.

The definitions come from the upstream (information_schema.VIEWS, by the session:
proxy/upstream/schema.py ViewCatalog); each is analyzed like a statement. A definition the
analyzer refuses, one that reads information_schema (whose rows the proxy filters per person,
which a view would bypass) or views nested deeper than MariaDB allows make the view unreadable
through the proxy.

Showing a view's definition (SHOW CREATE VIEW, SHOW CREATE TABLE of a view) needs SHOW VIEW on it
as well, as in MySQL; information_schema.VIEWS shows definitions only to those who see every
object (proxy/authz/metadata.py).

CREATE / ALTER VIEW (`create_view`): CREATE VIEW on the view and SELECT on what its SELECT reads;
OR REPLACE and ALTER also DROP on it (MySQL's rule). The view is created `SQL SECURITY INVOKER`
(added when the statement names none; `SQL SECURITY DEFINER` is refused): a definer view would
hand the shared account's rights to anyone who reads it on the server directly, outside the
proxy. A DEFINER other than CURRENT_USER is refused (it would run as another account). DROP VIEW
needs DROP on each view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sqlglot.tokens import Token, TokenType

from proxy.authz.model import COLUMN_PRIVILEGES, Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.names import INFORMATION_SCHEMA
from proxy.authz.outcome import Denied, denied, result
from proxy.authz.lexer import Cursor, word
from proxy.authz.walk import resolve_named

Dispatch = Callable[[str, list[Token], "str | None"], Analysis]


class NotKnown(Exception):
    """Raised by a `view_of` lookup: what `db` holds must be read (again) first."""

    def __init__(self, db: str) -> None:
        super().__init__(db)
        self.db = db


# TableRef → the analysis of its definition if it is a view, None if it is not; raises NotKnown.
ViewOf = Callable[[TableRef], "Analysis | None"]
# Views are expanded for these privileges (what reads or writes rows); others (DROP, ALTER ...)
# name the view itself.
_EXPANDED = frozenset({Privilege.SELECT, Privilege.INSERT, Privilege.UPDATE, Privilege.DELETE})
_WRITES = frozenset({Privilege.INSERT, Privilege.UPDATE, Privilege.DELETE})
MAX_DEPTH = 16  # views on views; MariaDB refuses deeper nesting long before it matters


def expand(analysis: Analysis, view_of: ViewOf) -> Analysis | frozenset[str]:
    """`analysis` with every view it reads or writes expanded (see the module's docstring), or
    the databases that must be read first (`view_of` raised NotKnown for them). The same object
    comes back when no view is involved."""
    if analysis.kind is StatementKind.SQL_PREPARE and analysis.prepared_analysis is not None:
        inner = expand(analysis.prepared_analysis, view_of)
        if isinstance(inner, frozenset) or inner is analysis.prepared_analysis:
            return inner if isinstance(inner, frozenset) else analysis
        return dataclasses.replace(analysis, prepared_analysis=inner)
    if analysis.kind is StatementKind.SHOW and analysis.statement_class == "SHOW CREATE TABLE":
        return _show_create(analysis, view_of)
    if analysis.kind in (StatementKind.DENIED, StatementKind.SHOW) or not analysis.requirements:
        return analysis
    missing: set[str] = set()
    requirements = set(analysis.requirements)
    columns = set(analysis.columns)
    stars = set(analysis.star_tables)
    unbounded = set(analysis.unbounded_writes)
    views: set[TableRef] = set()
    reached: set[TableRef] = set()
    pending = [(r, 0) for r in analysis.requirements if r.privilege in _EXPANDED]
    seen: set[Requirement] = set()
    while pending:
        req, depth = pending.pop()
        t = req.target
        if req in seen or t.table is None or t.db == INFORMATION_SCHEMA:
            continue
        seen.add(req)
        try:
            definition = view_of(t)
        except NotKnown as e:
            missing.add(e.db)
            continue
        if definition is None:
            continue  # a table
        refused = _unreadable(t, definition, depth)
        if refused is not None:
            return denied(DenyCode.UNSUPPORTED_STATEMENT, refused, analysis.statement_class)
        views.add(t)
        reads = list(definition.requirements)
        requirements.update(reads)
        reached.update(r.target for r in reads)
        columns.update(definition.columns)
        stars.update(definition.star_tables)
        pending.extend((r, depth + 1) for r in reads if r.privilege in _EXPANDED)
        if req.privilege in _WRITES:
            for base in sorted({r.target for r in reads if r.privilege is Privilege.SELECT}):
                write = Requirement(base, req.privilege)
                requirements.add(write)
                pending.append((write, depth + 1))
                if req.privilege in COLUMN_PRIVILEGES:
                    stars.add(write)  # which of its columns the view writes is not worked out
                if t in unbounded:
                    unbounded.add(base)
    if missing:
        return frozenset(missing)
    if not views:
        return analysis
    return dataclasses.replace(
        analysis,
        requirements=frozenset(requirements),
        columns=frozenset(columns),
        star_tables=frozenset(stars),
        unbounded_writes=frozenset(unbounded),
        views=frozenset(views),
        view_tables=frozenset(reached),
    )


def _show_create(analysis: Analysis, view_of: ViewOf) -> Analysis | frozenset[str]:
    """SHOW CREATE TABLE of a view shows its definition: SHOW VIEW on it too (MySQL's rule)."""
    found = []
    for req in analysis.requirements:
        if req.target.db == INFORMATION_SCHEMA:
            continue
        try:
            if view_of(req.target) is not None:
                found.append(req.target)
        except NotKnown as e:
            return frozenset({e.db})
    if not found:
        return analysis
    return dataclasses.replace(
        analysis, requirements=analysis.requirements | {Requirement(t, Privilege.SHOW_VIEW) for t in found})


def _unreadable(view: TableRef, definition: Analysis, depth: int) -> str | None:
    if depth >= MAX_DEPTH:
        return f"view {view} is nested more than {MAX_DEPTH} views deep"
    if definition.kind is StatementKind.DENIED:
        detail = definition.deny.detail if definition.deny is not None else "refused"
        return f"view {view} cannot be read through jitproxy: its definition is refused ({detail})"
    if definition.metadata_tables:
        return (f"view {view} cannot be read through jitproxy: its definition reads information_schema, "
                "which jitproxy shows to each person filtered")
    if definition.kind is not StatementKind.QUERY:
        return f"view {view} cannot be read through jitproxy: its definition is not a query"
    return None


def definition_analysis(analyze: Callable[[str, str | None], Analysis], db: str, text: str | None) -> Analysis:
    """The analysis of a view's definition as information_schema.VIEWS gives it (a SELECT,
    names qualified), read in the view's database."""
    if not text:
        return denied(DenyCode.UNSUPPORTED_STATEMENT, "the definition is not visible", "SELECT")
    found = analyze(text, db)
    if found.kind is StatementKind.QUERY and found.statement_class != "SELECT":
        return denied(DenyCode.UNSUPPORTED_STATEMENT, "the definition is not a SELECT", found.statement_class)
    return found


# -- CREATE / ALTER / DROP VIEW ----------------------------------------------------------------

_SECURITY_REFUSED = (
    "SQL SECURITY DEFINER is not supported: a view created through jitproxy runs with the rights of "
    "whoever reads it (SQL SECURITY INVOKER), since its definer is jitproxy's shared account; "
    "leave the clause out or write SQL SECURITY INVOKER"
)


def create_view(sql: str, tokens: list[Token], current_db: str | None, dispatch: Dispatch) -> Analysis:
    """CREATE [OR REPLACE] [ALGORITHM = a] [DEFINER = CURRENT_USER] [SQL SECURITY INVOKER] VIEW
    [IF NOT EXISTS] name [(columns)] AS select [WITH [CASCADED | LOCAL] CHECK OPTION], and ALTER
    VIEW likewise (without OR REPLACE and IF NOT EXISTS)."""
    c = Cursor(tokens, 1)
    alter = word(tokens[0]) == "ALTER"
    what = "ALTER VIEW" if alter else "CREATE VIEW"
    replace = not alter and c.accept("OR") is not None
    if replace:
        c.expect("REPLACE")
    if c.accept("ALGORITHM"):
        c.expect_type(TokenType.EQ)
        c.expect("UNDEFINED", "MERGE", "TEMPTABLE")
    if c.accept("DEFINER"):
        c.expect_type(TokenType.EQ)
        if c.accept("CURRENT_USER") is None:
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT,
                         f"{what} with a DEFINER other than CURRENT_USER is not supported: the view would "
                         "run as another account", what)
        if c.accept_type(TokenType.L_PAREN):
            c.expect_type(TokenType.R_PAREN)
    security_at = c.i
    if c.accept("SQL SECURITY") or (c.accept("SQL") and c.expect("SECURITY")):
        if c.expect("DEFINER", "INVOKER") == "DEFINER":
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, _SECURITY_REFUSED, what)
        security_at = -1
    view_token = tokens[c.i] if c.i < len(tokens) else None
    c.expect("VIEW")
    if not alter and c.accept("IF"):
        c.expect("NOT")
        c.expect("EXISTS")
    ref = resolve_named(*c.table_name(), current_db)
    if c.accept_type(TokenType.L_PAREN):
        c.ident()
        while c.accept_type(TokenType.COMMA):
            c.ident()
        c.expect_type(TokenType.R_PAREN)
    c.expect("AS")
    body = _without_check_option(tokens[c.i:])
    if not body:
        raise Denied(DenyCode.PARSE_ERROR, f"{what} without a SELECT", what)
    query = dispatch(sql, body, current_db)
    if query.kind is StatementKind.DENIED:
        assert query.deny is not None
        raise Denied(query.deny.code, query.deny.detail, what)
    if query.kind is not StatementKind.QUERY or query.statement_class != "SELECT":
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} AS {query.statement_class} is not a view", what)
    if query.metadata_tables:
        raise Denied(DenyCode.METADATA, f"{what} over information_schema is not supported: jitproxy shows "
                     "its rows to each person filtered, and a view would not be", what)
    requirements = set(query.requirements) | {Requirement(ref, Privilege.CREATE_VIEW)}
    if replace or alter:
        requirements.add(Requirement(ref, Privilege.DROP))
    rewritten = None
    if security_at >= 0:
        assert view_token is not None
        # Before VIEW, where MySQL's grammar puts it; the rest of the text is kept as sent.
        rewritten = sql[: view_token.start] + "SQL SECURITY INVOKER " + sql[view_token.start :]
    return result(StatementKind.QUERY, what, requirements, columns=query.columns, star_tables=query.star_tables,
                  mariadb_only=query.mariadb_only, rewritten=rewritten)


def _without_check_option(body: list[Token]) -> list[Token]:
    """The SELECT of a view definition without its trailing WITH [CASCADED | LOCAL] CHECK OPTION."""
    n = len(body)
    if n >= 3 and [word(t) for t in body[-2:]] == ["CHECK", "OPTION"]:
        k = n - 3
        if word(body[k]) in ("CASCADED", "LOCAL"):
            k -= 1
        if k >= 0 and word(body[k]) == "WITH":
            return body[:k]
    return body


def drop_view(tokens: list[Token], current_db: str | None) -> Analysis:
    """DROP VIEW [IF EXISTS] v [, v ...] [RESTRICT | CASCADE]: DROP on each view."""
    c = Cursor(tokens, 2)
    if c.accept("IF"):
        c.expect("EXISTS")
    refs = [resolve_named(*c.table_name(), current_db)]
    while c.accept_type(TokenType.COMMA):
        refs.append(resolve_named(*c.table_name(), current_db))
    c.accept("RESTRICT", "CASCADE")
    c.expect_end()
    return result(StatementKind.QUERY, "DROP VIEW", {Requirement(r, Privilege.DROP) for r in refs})

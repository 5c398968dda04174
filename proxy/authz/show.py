"""SHOW statements, read from their tokens. Allowed: what reveals nothing beyond the person's
grants (SHOW COLUMNS / INDEX / CREATE TABLE need SELECT on the table; SHOW TABLES and SHOW TABLE
STATUS need access to the database, and the session filters their rows by the first column) or
nothing per-object at all (variables, status, charsets, collations, engines, warnings). The
definition of a readable information_schema table needs no grant. Everything else is denied:
processlist, grants, replication, binlogs, other users' objects."""

from __future__ import annotations

from collections.abc import Iterable

from sqlglot.tokens import Token, TokenType

from proxy.authz import infoschema
from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.names import INFORMATION_SCHEMA
from proxy.authz.outcome import Denied, result
from proxy.authz.lexer import T_LPAREN, T_RPAREN, Cursor, word
from proxy.authz.walk import resolve_named, table_ref


def _like_or_where(c: Cursor, *, allow_like: bool = True) -> None:
    if c.at_end():
        return
    if allow_like and c.accept("LIKE"):
        c.expect_type(TokenType.STRING)
        c.expect_end()
        return
    if c.accept("WHERE"):
        rest = c.tokens[c.i :]
        for k, tok in enumerate(rest):
            if tok.token_type is T_LPAREN or tok.token_type is T_RPAREN or word(tok) in (
                "SELECT",
                "TABLE",
                "WITH",
                "VALUES",
                "EXISTS",
            ) or (  # NEXT VALUE FOR s: a sequence function without parentheses
                word(tok) in ("NEXT", "PREVIOUS")
                and k + 1 < len(rest)
                and word(rest[k + 1]) == "VALUE"
            ):
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    "SHOW ... WHERE with parentheses, subqueries or calls is not supported",
                )
        if not rest:
            raise Denied(DenyCode.PARSE_ERROR, "WHERE without a condition")
        c.i = len(c.tokens)
        return
    raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")


def show_result(
    statement_class: str, requirements: Iterable[Requirement] = (), **extra: object
) -> Analysis:
    return result(StatementKind.SHOW, statement_class, requirements, **extra)


def show(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    if c.accept("DATABASES", "SCHEMAS"):
        _like_or_where(c)
        return show_result("SHOW DATABASES")
    if c.accept("SESSION", "LOCAL"):
        w = c.expect("VARIABLES", "STATUS")
        _like_or_where(c)
        return show_result(f"SHOW {w}")
    w = c.accept("VARIABLES", "STATUS", "COLLATION", "CHARSET")
    if w:
        _like_or_where(c)
        return show_result("SHOW CHARACTER SET" if w == "CHARSET" else f"SHOW {w}")
    if c.accept("CHARACTER"):
        c.expect("SET")
        _like_or_where(c)
        return show_result("SHOW CHARACTER SET")
    w = c.accept("WARNINGS", "ERRORS")
    if w:
        if c.accept("LIMIT"):
            c.expect_type(TokenType.NUMBER)
            if c.accept_type(TokenType.COMMA):
                c.expect_type(TokenType.NUMBER)
        c.expect_end()
        return show_result(f"SHOW {w}")
    if c.accept("COUNT"):
        c.expect_type(TokenType.L_PAREN)
        c.expect_type(TokenType.STAR)
        c.expect_type(TokenType.R_PAREN)
        w = c.expect("WARNINGS", "ERRORS")
        c.expect_end()
        return show_result(f"SHOW COUNT(*) {w}")
    if c.accept("STORAGE"):
        c.expect("ENGINES")
        c.expect_end()
        return show_result("SHOW ENGINES")
    if c.accept("ENGINES"):
        c.expect_end()
        return show_result("SHOW ENGINES")
    if c.accept("CREATE"):
        obj = c.accept("TABLE", "VIEW")
        if obj is None:
            what = f"SHOW CREATE {c.word() or ''}".strip()
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
        db, table = c.table_name()
        c.expect_end()
        ref = resolve_named(db, table, current_db)
        requirements = describe_requirements(ref, f"SHOW CREATE {obj}")
        if obj == "VIEW":  # (SHOW CREATE TABLE of a view: views.expand adds it)
            requirements.add(Requirement(ref, Privilege.SHOW_VIEW))
        return show_result(f"SHOW CREATE {obj}", requirements)
    if c.accept("TABLE"):
        c.expect("STATUS")
        return show_result(
            "SHOW TABLE STATUS", database_access=frozenset({_database(c, current_db)})
        )
    c.accept("EXTENDED")
    full = c.accept("FULL") is not None
    if c.accept("TABLES"):
        return show_result("SHOW TABLES", database_access=frozenset({_database(c, current_db)}))
    w = c.accept("COLUMNS", "FIELDS") or (None if full else c.accept("INDEX", "INDEXES", "KEYS"))
    if w:
        statement_class = "SHOW COLUMNS" if w in ("COLUMNS", "FIELDS") else "SHOW INDEX"
        c.expect("FROM", "IN")
        db, table = c.table_name()
        if c.accept("FROM", "IN"):
            if db is not None:
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    "give the database once: SHOW ... FROM db.table or FROM table FROM db",
                    statement_class,
                )
            db = c.ident()
        _like_or_where(c, allow_like=statement_class == "SHOW COLUMNS")
        ref = resolve_named(db, table, current_db)
        return show_result(statement_class, describe_requirements(ref, statement_class))
    what = f"SHOW {c.word() or ''}".strip()
    raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)


def _database(c: Cursor, current_db: str | None) -> str:
    """`[FROM | IN db] [LIKE ... | WHERE ...]` of SHOW TABLES / SHOW TABLE STATUS: the database."""
    db_name = c.ident() if c.accept("FROM", "IN") else None
    _like_or_where(c)
    if db_name is None:
        if current_db is None:
            raise Denied(DenyCode.NO_DATABASE, "no database selected; use SHOW ... FROM db")
        db_name = current_db
    return table_ref(db_name, "-").db


def describe_requirements(ref: TableRef, statement_class: str) -> set[Requirement]:
    """What showing the definition of `ref` needs: SELECT on it; nothing for a readable
    information_schema table (its definition is the same on every server)."""
    if ref.db == INFORMATION_SCHEMA:
        try:
            infoschema.readable(ref.table or "")
        except Denied as d:
            d.statement_class = statement_class
            raise
        return set()
    return {Requirement(ref, Privilege.SELECT)}

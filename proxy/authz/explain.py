"""EXPLAIN / DESCRIBE / DESC / ANALYZE: of a statement (authorized as that statement: EXPLAIN
ANALYZE and MariaDB's ANALYZE execute it, so only they carry its unbounded writes) or of a table
(DESCRIBE t: SELECT on t). EXPLAIN FOR CONNECTION (another session's plan) is denied."""

from __future__ import annotations

from sqlglot.tokens import Token, TokenType

from proxy.authz.dml import parsed_statement, replace_statement
from proxy.authz.model import Analysis, DenyCode, StatementKind
from proxy.authz.outcome import Denied, result
from proxy.authz.show import describe_requirements, show_result
from proxy.authz.lexer import T_INTO, T_LPAREN, Cursor, word
from proxy.authz.walk import resolve_named


def explain(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    first = word(tokens[0])
    c = Cursor(tokens, 1)
    options = analyze_option = False
    while True:
        option = c.accept("ANALYZE", "EXTENDED", "PARTITIONS")
        if option:
            options = True
            analyze_option = analyze_option or option == "ANALYZE"
        elif c.accept("FORMAT"):
            c.expect_type(TokenType.EQ)
            c.expect("TRADITIONAL", "JSON", "TREE")
            options = True
        else:
            break
    if c.accept("FOR"):
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            "EXPLAIN FOR CONNECTION shows another session's statement; it is not supported",
        )
    tok = c.peek()
    if tok is not None and tok.token_type is T_INTO:
        raise Denied(DenyCode.SELECT_INTO, "EXPLAIN ... INTO is not allowed")
    w = c.word()
    statement = tok is not None and (
        tok.token_type is T_LPAREN
        or w in ("SELECT", "WITH", "TABLE", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE")
    )
    if first == "ANALYZE" and (not statement or w == "TABLE"):
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT, "ANALYZE TABLE is not supported", "ANALYZE TABLE"
        )
    if statement:
        executes = first == "ANALYZE" or analyze_option
        handler = replace_statement if w == "REPLACE" else parsed_statement
        inner = handler(sql, tokens[c.i :], current_db)
        return result(
            StatementKind.QUERY,
            "EXPLAIN",
            inner.requirements,
            metadata_tables=inner.metadata_tables,
            unbounded_writes=inner.unbounded_writes if executes else frozenset(),
            columns=inner.columns,
            star_tables=inner.star_tables,
            mariadb_only=inner.mariadb_only,
        )
    if options:
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "EXPLAIN of an unsupported form")
    db, table = c.table_name()
    if not c.at_end():
        if c.accept_type(TokenType.STRING) is None:
            c.ident()
        c.expect_end()
    ref = resolve_named(db, table, current_db)
    return show_result("DESCRIBE", describe_requirements(ref, "DESCRIBE"))

"""Session utility statements read from their tokens: USE (the session switches database on
success), KILL (the session handles it itself: only the person's own connections), HELP (the
server's help tables) and GET DIAGNOSTICS (this session's diagnostics area)."""

from __future__ import annotations

from sqlglot.tokens import Token, TokenType

from proxy.authz.model import Analysis, DenyCode, StatementKind
from proxy.authz.outcome import Denied, result
from proxy.authz.lexer import DIGITS, Cursor, leading_words
from proxy.authz.walk import table_ref


def use(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    db = c.ident()
    c.expect_end()
    db = table_ref(db, "-").db
    return result(StatementKind.USE, "USE", use_db=db, database_access=frozenset({db}))


def kill(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    scope = c.accept("CONNECTION", "QUERY")
    tok = c.accept_type(TokenType.NUMBER)
    if tok is None or not DIGITS.match(tok.text):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "KILL takes a numeric connection id")
    c.expect_end()
    return result(
        StatementKind.KILL,
        "KILL",
        kill_target=int(tok.text),
        kill_query_only=scope == "QUERY",
    )


def help_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """HELP 'topic': reads the server's help tables only."""
    c = Cursor(tokens, 1)
    c.expect_type(TokenType.STRING)
    c.expect_end()
    return result(StatementKind.SHOW, "HELP")


_STATEMENT_ITEMS = frozenset({"NUMBER", "ROW_COUNT"})
_CONDITION_ITEMS = frozenset(
    """
    CLASS_ORIGIN SUBCLASS_ORIGIN RETURNED_SQLSTATE MESSAGE_TEXT MYSQL_ERRNO CONSTRAINT_CATALOG
    CONSTRAINT_SCHEMA CONSTRAINT_NAME CATALOG_NAME SCHEMA_NAME TABLE_NAME COLUMN_NAME CURSOR_NAME
    ROW_NUMBER
    """.split()
)


def get_diagnostics(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """GET [CURRENT | STACKED] DIAGNOSTICS @v = item, ... | CONDITION n @v = item, ...: copies
    this session's diagnostics area (the last statement's errors) into user variables."""
    c = Cursor(tokens, 1)
    c.accept("CURRENT", "STACKED")
    if not c.accept("DIAGNOSTICS"):
        what = leading_words(tokens, 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    items = _STATEMENT_ITEMS
    if c.accept("CONDITION"):
        items = _CONDITION_ITEMS
        tok = c.peek()
        if tok is not None and tok.token_type is TokenType.PARAMETER:
            c.user_variable("GET DIAGNOSTICS CONDITION takes a number or a user variable")
        else:
            tok = c.expect_type(TokenType.NUMBER)
            if not DIGITS.match(tok.text):
                raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "a condition number is an integer")
    while True:
        c.user_variable("GET DIAGNOSTICS assigns user variables (@name) only")
        c.expect_type(TokenType.EQ)
        c.expect(*items)
        if c.accept_type(TokenType.COMMA) is None:
            break
    c.expect_end()
    return result(StatementKind.QUERY, "GET DIAGNOSTICS")

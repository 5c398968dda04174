"""Session utility statements read from their tokens: USE (the session switches database on
success) and KILL (the session handles it itself: only the person's own connections)."""

from __future__ import annotations

from sqlglot.tokens import Token, TokenType

from proxy.authz.model import Analysis, DenyCode, StatementKind
from proxy.authz.outcome import Denied, result
from proxy.authz.tokens import DIGITS, Cursor
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

"""Transaction control read from its tokens: BEGIN, START TRANSACTION, COMMIT, ROLLBACK. No
table requirements; `... RELEASE` is refused (it would close the pinned upstream connection)."""

from __future__ import annotations

from collections.abc import Callable

from sqlglot.tokens import Token, TokenType

from proxy.authz.model import Analysis, DenyCode, StatementKind
from proxy.authz.outcome import Denied, result
from proxy.authz.tokens import Cursor, leading_words


def begin(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    c.accept("WORK")
    c.expect_end()
    return result(StatementKind.TRANSACTION, "BEGIN")


def start(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    if not c.accept("TRANSACTION"):
        what = leading_words(tokens, 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    while not c.at_end():
        if c.accept("WITH"):
            c.expect("CONSISTENT")
            c.expect("SNAPSHOT")
        else:
            c.expect("READ")
            c.expect("ONLY", "WRITE")
        if c.accept_type(TokenType.COMMA) is None:
            break
        if c.at_end():
            raise Denied(DenyCode.PARSE_ERROR, "trailing comma")
    c.expect_end()
    return result(StatementKind.TRANSACTION, "START TRANSACTION")


def end_transaction(statement_class: str) -> Callable[[str, list[Token], str | None], Analysis]:
    def handler(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
        c = Cursor(tokens, 1)
        c.accept("WORK")
        if statement_class == "ROLLBACK" and c.word() == "TO":
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                "ROLLBACK TO SAVEPOINT is not supported",
                "ROLLBACK TO SAVEPOINT",
            )
        if c.accept("AND"):
            c.accept("NO")
            c.expect("CHAIN")
        if c.accept("NO"):
            c.expect("RELEASE")
        elif c.accept("RELEASE"):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT, f"{statement_class} ... RELEASE is not supported"
            )
        c.expect_end()
        return result(StatementKind.TRANSACTION, statement_class)

    return handler

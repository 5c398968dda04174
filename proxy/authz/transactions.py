"""Transactional and locking statements, read from their tokens: BEGIN, START TRANSACTION,
COMMIT, ROLLBACK, SAVEPOINT, RELEASE SAVEPOINT, ROLLBACK TO SAVEPOINT, XA, LOCK / UNLOCK TABLES.

No table requirements. `... RELEASE` is refused (it would close the pinned upstream
connection), and so is XA RECOVER (it lists the prepared XA transactions of every session of the
shared account). LOCK TABLES is read in full, then denied: a table lock blocks every other session
of the shared account (a READ lock blocks their writes, a WRITE lock everything), and the server
requires its own LOCK TABLES privilege for it, which no jitproxy grant carries. Were the model to
gain such a privilege, `_lock_requirements` says what each lock would need besides it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot.tokens import Token, TokenType

from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind
from proxy.authz.names import INFORMATION_SCHEMA
from proxy.authz.outcome import Denied, result
from proxy.authz.lexer import DIGITS, Cursor, leading_words, word
from proxy.authz.walk import resolve_named


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
        if statement_class == "ROLLBACK" and c.accept("TO"):
            c.accept("SAVEPOINT")
            c.ident()
            c.expect_end()
            return result(StatementKind.TRANSACTION, "ROLLBACK TO SAVEPOINT")
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


def savepoint(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    c.ident()
    c.expect_end()
    return result(StatementKind.TRANSACTION, "SAVEPOINT")


def release(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    if not c.accept("SAVEPOINT"):
        what = leading_words(tokens, 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    c.ident()
    c.expect_end()
    return result(StatementKind.TRANSACTION, "RELEASE SAVEPOINT")


# XA verb -> the optional words that may follow its xid.
_XA_VERBS: dict[str, tuple[tuple[str, ...], ...]] = {
    "START": (("JOIN",), ("RESUME",)),
    "BEGIN": (("JOIN",), ("RESUME",)),
    "END": (("SUSPEND",), ("SUSPEND", "FOR", "MIGRATE")),
    "PREPARE": (),
    "COMMIT": (("ONE", "PHASE"),),
    "ROLLBACK": (),
}
_XID_PART = (TokenType.STRING, TokenType.HEX_STRING)


def xa(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """XA {START|BEGIN|END|PREPARE|COMMIT|ROLLBACK} xid [...], xid = gtrid [, bqual [, formatID]]
    with string (or hex) literals and a number."""
    c = Cursor(tokens, 1)
    verb = c.word() or ""
    # Every session shares one database account, so XA COMMIT / ROLLBACK of an xid could end
    # another person's prepared transaction. Until the session tracks the xids it started, XA is
    # refused whole; the grammar below stays so that a later change only removes this line.
    raise Denied(
        DenyCode.UNSUPPORTED_STATEMENT,
        "XA transactions are not supported through jitproxy (one shared database account: an "
        "xid could name another person's transaction)",
        "XA",
    )
    if verb == "RECOVER":
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            "XA RECOVER lists the prepared XA transactions of every session of the shared "
            "account; it is not supported",
            "XA RECOVER",
        )
    if verb not in _XA_VERBS:
        what = leading_words(tokens, 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    c.i += 1
    statement_class = f"XA {'START' if verb == 'BEGIN' else verb}"
    for part in range(3):
        if part == 2:
            tok = c.accept_type(TokenType.NUMBER)
            if tok is None or not DIGITS.match(tok.text):
                raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "an XA formatID is a number")
        elif not any(c.accept_type(t) for t in _XID_PART):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT, "an XA transaction id is a string literal"
            )
        if c.accept_type(TokenType.COMMA) is None:
            break
    rest = tuple(word(t) or "" for t in tokens[c.i :])
    if rest and rest not in _XA_VERBS[verb]:
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{statement_class} of an unsupported form")
    return result(StatementKind.TRANSACTION, statement_class)


def lock_tables(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """LOCK TABLE[S] t [[AS] a] {READ [LOCAL] | [LOW_PRIORITY] WRITE [CONCURRENT]}, ...: names
    and form are checked (so a malformed or suspicious statement is denied for that), then the
    statement is denied."""
    requirements = _lock_requirements(tokens, current_db)
    tables = ", ".join(sorted({str(r.target) for r in requirements}))
    raise Denied(
        DenyCode.UNSUPPORTED_STATEMENT,
        f"LOCK TABLES ({tables}) is not supported: a table lock blocks every other session of "
        "the shared account, and it needs a LOCK TABLES privilege no jitproxy grant carries",
    )


def _lock_requirements(tokens: list[Token], current_db: str | None) -> set[Requirement]:
    """SELECT on each table locked, and UPDATE too for a WRITE lock."""
    c = Cursor(tokens, 1)
    if leading_words(tokens, 1) == "LOCK" and not c.accept("TABLES", "TABLE"):
        what = leading_words(tokens, 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    requirements: set[Requirement] = set()
    while True:
        ref = resolve_named(*c.table_name(), current_db)
        if c.accept("AS") or c.word() not in ("READ", "WRITE", "LOW_PRIORITY"):
            c.ident()  # an alias
        if c.accept("READ"):
            c.accept("LOCAL")
            requirements.add(Requirement(ref, Privilege.SELECT))
        else:
            c.accept("LOW_PRIORITY")
            c.expect("WRITE")
            c.accept("CONCURRENT")
            requirements.add(Requirement(ref, Privilege.SELECT))
            requirements.add(Requirement(ref, Privilege.UPDATE))
        if c.accept_type(TokenType.COMMA) is None:
            break
    c.expect_end()
    for req in requirements:
        if req.target.db == INFORMATION_SCHEMA:
            raise Denied(DenyCode.METADATA, "information_schema tables cannot be locked")
    return requirements


def unlock_tables(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    if leading_words(tokens, 1) == "UNLOCK" and not c.accept("TABLES", "TABLE"):
        what = leading_words(tokens, 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    c.expect_end()
    return result(StatementKind.TRANSACTION, "UNLOCK TABLES")

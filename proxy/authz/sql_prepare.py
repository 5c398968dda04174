"""SQL-level prepared statements: PREPARE name FROM 'text', EXECUTE name [USING @v, ...],
DEALLOCATE PREPARE name / DROP PREPARE name.

PREPARE is authorized as the statement its literal text holds, analyzed with the current
database (the server resolves a prepared statement's tables in the database current at PREPARE
time): `prepared_analysis` is that analysis, and the PREPARE carries its requirements, metadata
tables and unbounded writes as well. The text must be a plain string literal that the server
unescapes exactly as `literal_text` does; from a variable (or any expression) it is denied,
because its content is unknown here. Only what may be prepared is allowed: QUERY and
TRANSACTION kinds (not SET, USE, KILL, SHOW, nor another PREPARE / EXECUTE).

EXECUTE and DEALLOCATE only name a statement; the session keeps what each name was authorized
as and re-decides it at every EXECUTE. Statement names are compared case-insensitively by the
server: they are ASCII-only here and stored in lower case, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot.tokens import Token, TokenType

from proxy.authz.model import Analysis, DenyCode, StatementKind
from proxy.authz.outcome import Denied, result
from proxy.authz.lexer import T_IDENT, Cursor, leading_words, word

_PREPARABLE = frozenset({StatementKind.QUERY, StatementKind.TRANSACTION})
# MySQL's backslash escapes (string literals, sql_mode without NO_BACKSLASH_ESCAPES, which the
# proxy never allows); any other escaped character stands for itself, except `\%` and `\_`,
# which keep their backslash (for LIKE patterns).
_ESCAPES = {
    "0": "\x00", "'": "'", '"': '"', "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a",
    "\\": "\\", "%": "\\%", "_": "\\_",
}


def prepare(
    analyze_text: Callable[[str, str | None], Analysis],
    sql: str,
    tokens: list[Token],
    current_db: str | None,
) -> Analysis:
    c = Cursor(tokens, 1)
    name = _statement_name(c)
    c.expect("FROM")
    tok = c.peek()
    if tok is None or tok.token_type is not TokenType.STRING or tok.end + 1 > len(sql):
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            "PREPARE ... FROM: the text must be a literal string, not a variable or expression",
        )
    c.i += 1
    if not c.at_end():
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            "PREPARE ... FROM: the text must be one literal string",
        )
    inner = analyze_text(literal_text(sql[tok.start : tok.end + 1]), current_db)
    if inner.deny is not None:
        raise Denied(inner.deny.code, f"the prepared statement: {inner.deny.detail}")
    if inner.kind not in _PREPARABLE or inner.rewritten is not None:  # (CREATE VIEW: sent rewritten)
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            f"{inner.statement_class} cannot be prepared through jitproxy; "
            "send it as a plain query",
        )
    return result(
        StatementKind.SQL_PREPARE,
        "PREPARE",
        inner.requirements,
        database_access=inner.database_access,
        metadata_tables=inner.metadata_tables,
        unbounded_writes=inner.unbounded_writes,
        prepared_name=name,
        columns=inner.columns,
        star_tables=inner.star_tables,
        prepared_analysis=inner,
        mariadb_only=inner.mariadb_only,
    )


def execute(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    tok = c.peek()
    if tok is not None and tok.token_type is not T_IDENT and word(tok) == "IMMEDIATE":
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            "EXECUTE IMMEDIATE is not supported: its text is not known before it runs",
            "EXECUTE IMMEDIATE",
        )
    name = _statement_name(c)
    if c.accept("USING"):
        while True:
            c.user_variable("EXECUTE ... USING takes user variables (@name) only")
            if c.accept_type(TokenType.COMMA) is None:
                break
    c.expect_end()
    return result(StatementKind.SQL_EXECUTE, "EXECUTE", prepared_name=name)


def deallocate(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    if not c.accept("PREPARE"):
        what = leading_words(tokens, 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    name = _statement_name(c)
    c.expect_end()
    return result(StatementKind.SQL_DEALLOCATE, "DEALLOCATE PREPARE", prepared_name=name)


def literal_text(raw: str) -> str:
    """The value of a quoted MySQL string literal ('...' or "..."), as the server reads it."""
    quote = raw[:1]
    if quote not in ("'", '"') or len(raw) < 2 or raw[-1] != quote:
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "PREPARE ... FROM: not a quoted string")
    body = raw[1:-1]
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch == "\\":
            if i + 1 >= n:
                raise Denied(DenyCode.PARSE_ERROR, "an unterminated string")
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        elif ch == quote:
            if i + 1 >= n or body[i + 1] != quote:
                raise Denied(DenyCode.PARSE_ERROR, "PREPARE ... FROM: the string ends early")
            out.append(quote)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _statement_name(c: Cursor) -> str:
    name = c.ident()
    if not name.isascii():
        raise Denied(
            DenyCode.SUSPICIOUS_NAME, "prepared statement names must be ASCII (letters, digits, _)"
        )
    return name.lower()


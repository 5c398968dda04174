"""Indexes and sequences: CREATE / DROP INDEX and MariaDB's CREATE / ALTER / DROP SEQUENCE, read
straight from their tokens (small fixed grammars; sqlglot reads most of them as an opaque
`Command`). The privileges are MariaDB's (checked by the differential tests against MariaDB
10.11):

- CREATE [OR REPLACE] [UNIQUE|FULLTEXT|SPATIAL] INDEX [IF NOT EXISTS] i ON t (...): INDEX on t
  (also with OR REPLACE); DROP INDEX [IF EXISTS] i ON t: INDEX on t. (ALTER TABLE t ADD INDEX /
  DROP INDEX is an ALTER TABLE: ALTER on t, see ddl.py.)
- CREATE SEQUENCE s: CREATE on s; CREATE OR REPLACE SEQUENCE s: CREATE and DROP on s;
  ALTER SEQUENCE s: ALTER on s; DROP SEQUENCE s, ...: DROP on each.
  A sequence is a table: SELECT * FROM s needs SELECT, and its functions (walk.py) NEXTVAL
  SELECT and INSERT, LASTVAL SELECT, SETVAL INSERT.

Temporary sequences are refused (MariaDB needs CREATE TEMPORARY TABLES for them, which no
jitproxy grant carries). Every option is read and allow-listed; a form the grammar does not read
is a parse error (the statement class itself is supported).
"""

from __future__ import annotations

from sqlglot.tokens import Token, TokenType

from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.outcome import Denied, result
from proxy.authz.lexer import DIGITS, T_LPAREN, T_RPAREN, Cursor
from proxy.authz.walk import resolve_named


class Reader(Cursor):
    """A Cursor whose mismatches are parse errors: the statement class is supported, the form
    is not one it reads."""

    __slots__ = ("what",)

    def __init__(self, tokens: list[Token], i: int, what: str) -> None:
        super().__init__(tokens, i)
        self.what = what

    def _fail(self) -> Denied:
        tok = self.peek()
        near = f" near '{tok.text[:40]}'" if tok is not None else " at its end"
        return Denied(DenyCode.PARSE_ERROR, f"{self.what} could not be parsed{near}", self.what)

    def expect(self, *words: str) -> str:
        w = self.accept(*words)
        if w is None:
            raise self._fail()
        return w

    def expect_type(self, token_type: TokenType) -> Token:
        tok = self.accept_type(token_type)
        if tok is None:
            raise self._fail()
        return tok

    def expect_end(self) -> None:
        if not self.at_end():
            raise self._fail()

    def ident(self) -> str:
        if self.at_end():
            raise self._fail()
        try:
            return super().ident()
        except Denied as d:
            if d.code is DenyCode.UNSUPPORTED_STATEMENT:  # "expected a name"
                raise self._fail() from None
            raise

    def equals(self) -> None:
        """An optional `=`."""
        self.accept_type(TokenType.EQ)

    def number(self, signed: bool = False) -> None:
        if signed and self.accept_type(TokenType.DASH) is None:
            self.accept_type(TokenType.PLUS)
        tok = self.expect_type(TokenType.NUMBER)
        if not DIGITS.match(tok.text):
            raise self._fail()

    def engine(self, allowed_engines: frozenset[str], what: str) -> None:
        """`[=] name` after ENGINE: refused unless an allowed engine (`what` names the object)."""
        self.equals()
        name = self.ident()
        if name.lower() not in allowed_engines:
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} with ENGINE={name} is not supported", self.what)

    def if_not_exists(self) -> bool:
        if self.accept("IF"):
            self.expect("NOT")
            self.expect("EXISTS")
            return True
        return False

    def if_exists(self) -> bool:
        if self.accept("IF"):
            self.expect("EXISTS")
            return True
        return False

    def table(self, current_db: str | None) -> TableRef:
        return resolve_named(*self.table_name(), current_db)


# -- indexes --------------------------------------------------------------------------------------

_INDEX_TYPES = ("BTREE", "HASH", "RTREE")
_ALGORITHMS = ("DEFAULT", "INPLACE", "COPY", "NOCOPY", "INSTANT")
_LOCKS = ("DEFAULT", "NONE", "SHARED", "EXCLUSIVE")


def create_index(tokens: list[Token], current_db: str | None) -> Analysis:
    """CREATE [OR REPLACE] [UNIQUE|FULLTEXT|SPATIAL] INDEX [IF NOT EXISTS] name [index_type]
    ON tbl (col [(length)] [ASC|DESC], ...) [WAIT n | NOWAIT] [index_option]
    [algorithm_option | lock_option] ..."""
    c = Reader(tokens, 1, "CREATE INDEX")
    if c.accept("OR"):
        c.expect("REPLACE")
    c.accept("UNIQUE", "FULLTEXT", "SPATIAL")
    c.expect("INDEX")
    c.if_not_exists()
    c.ident()
    _index_type(c)
    c.expect("ON")
    ref = c.table(current_db)
    c.expect_type(T_LPAREN)
    while True:
        c.ident()
        if c.accept_type(T_LPAREN) is not None:  # a prefix length
            c.number()
            c.expect_type(T_RPAREN)
        c.accept("ASC", "DESC")
        if c.accept_type(TokenType.COMMA) is None:
            break
    c.expect_type(T_RPAREN)
    while not c.at_end():
        if _index_type(c) or _wait(c) or _alter_option(c):
            continue
        if c.accept("KEY_BLOCK_SIZE"):
            c.equals()
            c.number()
        elif c.accept("COMMENT"):
            c.equals()
            c.expect_type(TokenType.STRING)
        elif c.accept("CLUSTERING"):
            c.equals()
            c.expect("YES", "NO")
        elif c.accept("IGNORED", "VISIBLE"):
            pass
        elif c.accept("NOT"):
            c.expect("IGNORED")
        elif c.accept("WITH"):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                "CREATE INDEX ... WITH PARSER is not supported: a parser plugin runs code inside "
                "the server",
                "CREATE INDEX",
            )
        else:
            raise c._fail()
    return result(StatementKind.QUERY, "CREATE INDEX", {Requirement(ref, Privilege.INDEX)})


def drop_index(tokens: list[Token], current_db: str | None) -> Analysis:
    """DROP INDEX [IF EXISTS] name ON tbl [WAIT n | NOWAIT] (MariaDB takes no ALGORITHM / LOCK
    here)."""
    c = Reader(tokens, 1, "DROP INDEX")
    c.expect("INDEX")
    c.if_exists()
    c.ident()
    c.expect("ON")
    ref = c.table(current_db)
    _wait(c)
    c.expect_end()
    return result(StatementKind.QUERY, "DROP INDEX", {Requirement(ref, Privilege.INDEX)})


def _index_type(c: Reader) -> bool:
    if c.accept("USING", "TYPE"):
        c.expect(*_INDEX_TYPES)
        return True
    return False


def _wait(c: Reader) -> bool:
    if c.accept("NOWAIT"):
        return True
    if c.accept("WAIT"):
        c.number()
        return True
    return False


def _alter_option(c: Reader) -> bool:
    if c.accept("ALGORITHM"):
        c.equals()
        c.expect(*_ALGORITHMS)
        return True
    if c.accept("LOCK"):
        c.equals()
        c.expect(*_LOCKS)
        return True
    return False


# -- sequences ------------------------------------------------------------------------------------

_TEMPORARY = (
    "temporary sequences are not supported (MariaDB needs CREATE TEMPORARY TABLES for them, "
    "which no jitproxy grant carries)"
)


def create_sequence(
    tokens: list[Token], current_db: str | None, allowed_engines: frozenset[str]
) -> Analysis:
    """CREATE [OR REPLACE] SEQUENCE [IF NOT EXISTS] name [sequence options] [ENGINE / COMMENT]"""
    c = Reader(tokens, 1, "CREATE SEQUENCE")
    replace = False
    if c.accept("OR"):
        c.expect("REPLACE")
        replace = True
    if c.accept("TEMPORARY"):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, _TEMPORARY, "CREATE TEMPORARY SEQUENCE")
    c.expect("SEQUENCE")
    c.if_not_exists()
    ref = c.table(current_db)
    _sequence_options(c, allowed_engines, alter=False)
    requirements = {Requirement(ref, Privilege.CREATE)}
    if replace:  # it drops the sequence (or table) of that name first
        requirements.add(Requirement(ref, Privilege.DROP))
    return result(StatementKind.QUERY, "CREATE SEQUENCE", requirements)


def alter_sequence(
    tokens: list[Token], current_db: str | None, allowed_engines: frozenset[str]
) -> Analysis:
    """ALTER SEQUENCE [IF EXISTS] name [sequence options | RESTART [[WITH | =] n]] ..."""
    c = Reader(tokens, 1, "ALTER SEQUENCE")
    c.expect("SEQUENCE")
    c.if_exists()
    ref = c.table(current_db)
    _sequence_options(c, allowed_engines, alter=True)
    return result(StatementKind.QUERY, "ALTER SEQUENCE", {Requirement(ref, Privilege.ALTER)})


def drop_sequence(tokens: list[Token], current_db: str | None) -> Analysis:
    """DROP SEQUENCE [IF EXISTS] name [, name] ..."""
    c = Reader(tokens, 1, "DROP SEQUENCE")
    if c.accept("TEMPORARY"):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, _TEMPORARY, "DROP TEMPORARY SEQUENCE")
    c.expect("SEQUENCE")
    c.if_exists()
    requirements = set()
    while True:
        requirements.add(Requirement(c.table(current_db), Privilege.DROP))
        if c.accept_type(TokenType.COMMA) is None:
            break
    c.expect_end()
    return result(StatementKind.QUERY, "DROP SEQUENCE", requirements)


def _sequence_options(c: Reader, allowed_engines: frozenset[str], *, alter: bool) -> None:
    while not c.at_end():
        if c.accept("INCREMENT"):
            if c.accept("BY") is None:
                c.equals()
            c.number(signed=True)
        elif c.accept("MINVALUE", "MAXVALUE"):
            c.equals()
            c.number(signed=True)
        elif c.accept("NO"):
            c.expect("MINVALUE", "MAXVALUE")
        elif c.accept("NOMINVALUE", "NOMAXVALUE", "NOCACHE", "CYCLE", "NOCYCLE"):
            pass
        elif c.accept("START"):
            if c.accept("WITH") is None:
                c.equals()
            c.number(signed=True)
        elif c.accept("CACHE"):
            c.equals()
            c.number()
        elif alter and c.accept("RESTART"):
            nxt = c.peek()
            if c.accept("WITH") is not None or c.accept_type(TokenType.EQ) is not None:
                c.number(signed=True)
            elif nxt is not None and nxt.token_type in (TokenType.NUMBER, TokenType.DASH):
                c.number(signed=True)
        elif c.accept("ENGINE"):
            c.engine(allowed_engines, c.what)
        elif c.accept("COMMENT"):
            c.equals()
            c.expect_type(TokenType.STRING)
        else:
            raise c._fail()

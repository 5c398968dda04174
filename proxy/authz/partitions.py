"""CREATE TABLE's partitioning clause (`PARTITION BY RANGE | LIST | HASH | KEY ...`), read from
its tokens and taken out before sqlglot parses the rest of the statement (sqlglot reads only
some RANGE and LIST forms, and none with MAXVALUE, HASH or KEY).

Partitioning changes how rows are stored, not what the statement touches: a partitioned CREATE
TABLE needs what the same CREATE TABLE without the clause needs (MariaDB's rule). The clause is
read in full and its expressions are checked, since they are never parsed into the tree: only
built-in function calls (MariaDB also refuses stored functions there), no subquery, variable,
placeholder or qualified name. Per-partition DATA / INDEX DIRECTORY (file placement), TABLESPACE
and engines outside the allowed list are refused like the same table options; SYSTEM_TIME
partitioning is not supported.
"""

from __future__ import annotations

from sqlglot.tokens import Token, TokenType

from proxy.authz import functions
from proxy.authz.model import DenyCode
from proxy.authz.outcome import Denied
from proxy.authz.schema_objects import Reader
from proxy.authz.lexer import NOT_WORD_IDS, STRINGISH_IDS, T_IDENT, T_LPAREN, T_RPAREN, top_level, word

_WHAT = "CREATE TABLE"  # the statement class of a denial
# Words that never belong in a partitioning expression.
_NOT_IN_EXPRESSIONS = frozenset(
    {"SELECT", "WITH", "FROM", "INTO", "VALUES", "TABLE", "UNION", "EXCEPT", "INTERSECT", "EXISTS"}
)
_OPERATORS = frozenset(
    {
        TokenType.PLUS, TokenType.DASH, TokenType.STAR, TokenType.SLASH, TokenType.MOD,
        TokenType.COMMA, TokenType.NUMBER, TokenType.NULL, TokenType.TRUE, TokenType.FALSE,
    }
)


def strip_partitioning(tokens: list[Token], allowed_engines: frozenset[str]) -> list[Token]:
    """`tokens` of a CREATE TABLE without its partitioning clause (checked), or as they are."""
    start = _clause_start(tokens)
    if start < 0:
        return tokens
    c = Reader(tokens, start + 1, _WHAT)
    _method(c, sub=False)
    if c.accept("PARTITIONS"):
        c.number()
    if c.accept("SUBPARTITION"):
        c.expect("BY")
        _method(c, sub=True)
        if c.accept("SUBPARTITIONS"):
            c.number()
    if c.accept_type(T_LPAREN) is not None:
        while True:
            _definition(c, allowed_engines, sub=False)
            if c.accept_type(TokenType.COMMA) is None:
                break
        c.expect_type(T_RPAREN)
    return tokens[:start] + tokens[c.i :]


def _clause_start(tokens: list[Token]) -> int:
    """The index of a top-level PARTITION BY before any SELECT (window PARTITION BY is always
    inside OVER (...) or WINDOW w AS (...)), or -1."""
    for i, tok in top_level(tokens):
        if tok.token_type is TokenType.PARTITION_BY:
            return i
        if tok.token_type in (TokenType.SELECT, TokenType.WITH):
            return -1
    return -1


def _method(c: Reader, *, sub: bool) -> None:
    if c.accept("SYSTEM_TIME"):
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            "CREATE TABLE ... PARTITION BY SYSTEM_TIME is not supported",
            _WHAT,
        )
    linear = c.accept("LINEAR") is not None
    if c.accept("HASH"):
        _expression(c)
    elif c.accept("KEY"):
        if c.accept("ALGORITHM"):
            c.expect_type(TokenType.EQ)
            c.number()
        _column_list(c, empty=True)
    elif not linear and not sub and c.accept("RANGE", "LIST"):
        if c.accept("COLUMNS"):
            _column_list(c, empty=False)
        else:
            _expression(c)
    else:
        raise c._fail()


def _column_list(c: Reader, *, empty: bool) -> None:
    c.expect_type(T_LPAREN)
    if empty and c.accept_type(T_RPAREN) is not None:
        return
    while True:
        c.ident()
        if c.accept_type(TokenType.COMMA) is None:
            break
    c.expect_type(T_RPAREN)


def _expression(c: Reader) -> None:
    """A parenthesized expression or value list: read to its closing parenthesis, token by
    token, allowing literals, column names, operators and built-in function calls."""
    c.expect_type(T_LPAREN)
    depth = 1
    while depth:
        tok = c.peek()
        if tok is None:
            raise c._fail()
        c.i += 1
        tt = tok.token_type
        nxt = c.peek()
        calls = nxt is not None and nxt.token_type is T_LPAREN
        if tt is T_LPAREN:
            depth += 1
        elif tt is T_RPAREN:
            depth -= 1
        elif tt in _OPERATORS or id(tt) in STRINGISH_IDS:
            continue
        elif tt is T_IDENT:
            if calls:
                raise Denied(
                    DenyCode.UNKNOWN_FUNCTION,
                    f"a backquoted function name ({tok.text}) in PARTITION BY calls a stored "
                    "function",
                    _WHAT,
                )
        elif id(tt) not in NOT_WORD_IDS and word(tok) is not None:
            w = word(tok) or ""
            if w in _NOT_IN_EXPRESSIONS or (w in ("NEXT", "PREVIOUS") and word(nxt) == "VALUE"):
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    f"{w} in a partitioning expression (PARTITION BY) is not supported",
                    _WHAT,
                )
            if calls:
                verdict = functions.check_call_name(tok.text)
                if verdict is not None:
                    raise Denied(*verdict, _WHAT)
        else:
            raise c._fail()


def _definition(c: Reader, allowed_engines: frozenset[str], *, sub: bool) -> None:
    c.expect("SUBPARTITION" if sub else "PARTITION")
    c.ident()
    if not sub:
        if c.accept("VALUES"):
            if c.accept("LESS"):
                c.expect("THAN")
                if not c.accept("MAXVALUE"):
                    _expression(c)
            else:
                c.expect("IN")
                _expression(c)
        else:
            c.accept("DEFAULT")
    while True:
        if c.accept("STORAGE"):
            c.expect("ENGINE")
            c.engine(allowed_engines, "a partition")
        elif c.accept("ENGINE"):
            c.engine(allowed_engines, "a partition")
        elif c.accept("COMMENT"):
            c.equals()
            c.expect_type(TokenType.STRING)
        elif c.accept("MAX_ROWS", "MIN_ROWS", "NODEGROUP"):
            c.equals()
            c.number()
        elif c.accept("DATA", "INDEX", "TABLESPACE"):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                "partition DATA DIRECTORY, INDEX DIRECTORY and TABLESPACE are not supported",
                _WHAT,
            )
        else:
            break
    if not sub and c.accept_type(T_LPAREN) is not None:
        while True:
            _definition(c, allowed_engines, sub=True)
            if c.accept_type(TokenType.COMMA) is None:
                break
        c.expect_type(T_RPAREN)



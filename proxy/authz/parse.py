"""Tokens -> one sqlglot tree, after token-level repairs of known sqlglot mis-parses and the
checks that need the exact spelling.

Repairs: the LOW_PRIORITY / QUICK / IGNORE / DELAYED / HIGH_PRIORITY modifiers (sqlglot reads a
table named LOW_PRIORITY) and `DELETE t.*` (sqlglot rejects it) are dropped; they change neither
the tables touched nor the privileges needed. Checks: INTO anywhere but INSERT's target, two
consecutive WITH clauses (sqlglot merges them, MySQL rejects them), and every `name(` call
spelling (`functions.check_token_call`).
"""

from __future__ import annotations

import logging

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from proxy.authz import functions
from proxy.authz.model import DenyCode
from proxy.authz.outcome import Denied
from proxy.authz.tokens import (
    DIALECT,
    IDENT,
    NOT_WORD_IDS,
    STRINGISH_IDS,
    T_DOT,
    T_HINT,
    T_IDENT,
    T_INTO,
    T_LPAREN,
    T_RPAREN,
    T_STAR,
    T_WITH,
    word,
)


class _DropCommandFallbackWarning(logging.Filter):
    """sqlglot logs a warning, with the start of the SQL text, whenever it falls back to
    `exp.Command`. Those statements are denied here anyway, and statement text must not reach
    operator logs from the analyzer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in str(record.msg)


logging.getLogger("sqlglot").addFilter(_DropCommandFallbackWarning())

# Statement modifiers sqlglot mis-parses (a table named LOW_PRIORITY) or rejects; they change
# neither the tables touched nor the privileges needed, so they are dropped before parsing.
_MODIFIERS = {
    id(TokenType.UPDATE): frozenset({"LOW_PRIORITY", "IGNORE"}),
    id(TokenType.DELETE): frozenset({"LOW_PRIORITY", "QUICK", "IGNORE"}),
    id(TokenType.INSERT): frozenset({"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE"}),
}
MODIFIER_WORDS = frozenset({"LOW_PRIORITY", "QUICK", "IGNORE", "DELAYED", "HIGH_PRIORITY"})
# A word followed by `(` after these tokens names a table, CTE or index, not a function.
_NOT_A_CALL_AFTER = frozenset({"INTO", "TABLE", "REFERENCES", "WITH", "RECURSIVE", "KEY", "INDEX"})
_STATEMENT_AFTER_WITH = frozenset(
    {"SELECT", "TABLE", "VALUES", "UPDATE", "DELETE", "INSERT", "REPLACE", "WITH"}
)


def parse_one(sql: str, tokens: list[Token]) -> exp.Expr:
    trees = [t for t in DIALECT.parser().parse(tokens, sql) if t is not None]
    if len(trees) != 1:
        raise Denied(DenyCode.PARSE_ERROR, "the statement could not be parsed")
    return trees[0]


def prepare(tokens: list[Token], upper_sql: str) -> list[Token]:
    """The repaired tokens, ready for `parse_one`; denies what the checks refuse."""
    if any(w in upper_sql for w in MODIFIER_WORDS):
        tokens = _strip_modifiers(tokens)
    into_at = -1
    if tokens[0].token_type is TokenType.DELETE:
        tokens = _strip_delete_star(tokens)
    elif tokens[0].token_type is TokenType.INSERT:
        into_at = 2 if len(tokens) > 1 and tokens[1].token_type is T_HINT else 1
        _check_insert_source(tokens)
    if "INTO" in upper_sql:
        _check_into(tokens, into_at)
    if "WITH" in upper_sql:
        _check_with_clauses(tokens)
    _check_token_calls(tokens)
    return tokens


def _strip_modifiers(tokens: list[Token]) -> list[Token]:
    out: list[Token] = []
    n, i = len(tokens), 0
    while i < n:
        tok = tokens[i]
        out.append(tok)
        i += 1
        mods = _MODIFIERS.get(id(tok.token_type))
        if mods is None:
            continue
        if i < n and tokens[i].token_type is T_HINT:
            out.append(tokens[i])
            i += 1
        while i < n and word(tokens[i]) in mods:
            i += 1
    return out


def _strip_delete_star(tokens: list[Token]) -> list[Token]:
    """`DELETE t.* FROM ...` / `DELETE FROM t.* USING ...` -> without `.*` (sqlglot rejects it)."""
    out: list[Token] = []
    depth, i, n = 0, 0, len(tokens)
    while i < n:
        tok = tokens[i]
        tt = tok.token_type
        if tt is T_LPAREN:
            depth += 1
        elif tt is T_RPAREN:
            depth -= 1
        elif (
            depth == 0
            and tt is T_DOT
            and i + 1 < n
            and tokens[i + 1].token_type is T_STAR
            and out
            and id(out[-1].token_type) not in STRINGISH_IDS
        ):
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def _check_token_calls(tokens: list[Token]) -> None:
    prev: Token | None = None
    tok: Token | None = None
    for nxt in tokens:
        before, prev, tok = prev, tok, nxt
        if nxt.token_type is not T_LPAREN or prev is None:
            continue
        call = prev
        quoted = call.token_type is T_IDENT
        if not quoted and (id(call.token_type) in NOT_WORD_IDS or not IDENT.match(call.text)):
            continue
        if before is not None and (
            before.token_type is T_DOT or word(before) in _NOT_A_CALL_AFTER
        ):
            continue  # a table/CTE/index name; qualified calls are caught on the tree
        verdict = functions.check_token_call(call.text, quoted, nxt.start == call.end + 1)
        if verdict is not None:
            raise Denied(*verdict)


_INSERT_SOURCE_IDS = frozenset(
    id(t)
    for t in (TokenType.VALUES, TokenType.SELECT, TokenType.TABLE, TokenType.SET, TokenType.WITH)
)


def _check_insert_source(tokens: list[Token]) -> None:
    """sqlglot reads `INSERT INTO t FROM s` as `INSERT INTO t SELECT * FROM s` (a FROM-first
    dialect's syntax); MySQL has no such form."""
    depth = 0
    for tok in tokens[1:]:
        tt = tok.token_type
        if tt is T_LPAREN:
            depth += 1
        elif tt is T_RPAREN:
            depth -= 1
        elif depth == 0:
            if tt is TokenType.FROM:
                raise Denied(DenyCode.PARSE_ERROR, "INSERT ... FROM is not MySQL")
            if id(tt) in _INSERT_SOURCE_IDS:
                return


def _check_into(tokens: list[Token], allowed_at: int = -1) -> None:
    for i, tok in enumerate(tokens):
        if tok.token_type is T_INTO and i != allowed_at:
            raise Denied(
                DenyCode.SELECT_INTO,
                "SELECT ... INTO (variables, OUTFILE, DUMPFILE) is not allowed",
            )


def main_keyword_after_with(tokens: list[Token], start: int = 0) -> str | None:
    """The statement the WITH at `tokens[start]` introduces: the first statement keyword outside
    parentheses (CTE bodies and column lists are parenthesized; a `(` right after a body opens
    the query). None if the enclosing parenthesis closes first."""
    depth = 0
    prev = tokens[start]
    for tok in tokens[start + 1 :]:
        tt = tok.token_type
        if tt is T_LPAREN:
            if depth == 0 and prev.token_type is T_RPAREN:
                return "("
            depth += 1
        elif tt is T_RPAREN:
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            w = word(tok)
            if w in _STATEMENT_AFTER_WITH:
                return w
        prev = tok
    return None


def _check_with_clauses(tokens: list[Token]) -> None:
    """sqlglot merges `WITH a AS (...) WITH b AS (...) q` into one WITH clause; MySQL rejects it."""
    for i, tok in enumerate(tokens):
        if tok.token_type is T_WITH and main_keyword_after_with(tokens, i) == "WITH":
            raise Denied(DenyCode.PARSE_ERROR, "one WITH clause per query block")

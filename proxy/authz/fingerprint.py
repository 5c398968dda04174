"""A literal-normalized fingerprint of a statement, so the analysis of `... WHERE id = 5` serves
`... WHERE id = 6` without parsing again.

Two statements share a fingerprint only if they tokenize to the same token types and texts with
literal values masked: same keywords, identifiers (quoted or not), operators and punctuation in
the same order. A statement gets no fingerprint (None: analyze it in full) unless it is plainly
safe to normalize:
- printable ASCII plus tab/newline/CR only (the analyzer refuses control characters and Unicode
  spaces that sqlglot and MySQL read differently; those must reach it);
- no comments of any kind (executable comments are comments to the tokenizer);
- one statement whose first keyword is SELECT, WITH, INSERT, UPDATE or DELETE: statements where
  a literal decides what happens (SET sql_mode = '...', KILL 5, PREPARE s FROM '...') never get
  one.
Only analyses of kind QUERY are cached under a fingerprint (see proxy.authz.cache.AnalysisCache)."""

from __future__ import annotations

import re

from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

_PLAIN = re.compile(r"[\t\n\r\x20-\x7e]*")
_LITERALS = frozenset(
    {
        TokenType.NUMBER,
        TokenType.STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.NATIONAL_STRING,
        TokenType.BYTE_STRING,
    }
)
_FIRST = frozenset({TokenType.SELECT, TokenType.WITH, TokenType.INSERT, TokenType.UPDATE, TokenType.DELETE})
_DIALECT = MySQL()

Fingerprint = tuple[object, ...]


def fingerprint(sql: str) -> Fingerprint | None:
    if not _PLAIN.fullmatch(sql):
        return None
    try:
        tokens = _DIALECT.tokenize(sql)
    except TokenError:
        return None
    if not tokens or tokens[0].token_type not in _FIRST:
        return None
    key: list[object] = []
    for tok in tokens:
        if tok.comments or tok.token_type is TokenType.SEMICOLON:
            return None
        if tok.token_type in _LITERALS:
            key.append(tok.token_type)
        else:
            key.append((tok.token_type, tok.text))
    return tuple(key)

"""Literal-free statement text for audit: the fingerprint every statement event carries, and the
text written instead of the statement when `audit.redact_literals` is on
(`SELECT * FROM t WHERE ssn = ?`). Tokenized with sqlglot's MySQL tokenizer, so a string that
contains a quote or a comment marker cannot make a literal leak or hide a keyword."""

from __future__ import annotations

import hashlib
import re

from sqlglot.dialects.mysql import MySQL
from sqlglot.tokens import TokenType

_LITERALS = frozenset({
    TokenType.NUMBER, TokenType.STRING, TokenType.HEX_STRING, TokenType.BIT_STRING,
    TokenType.NATIONAL_STRING, TokenType.BYTE_STRING,
})
_TOKENIZER = MySQL().tokenizer_class()
# When the tokenizer gives up (unterminated strings...): blank anything quote- or digit-like.
_FALLBACK = re.compile(r"'(?:[^'\\]|\\.|'')*'?|\"(?:[^\"\\]|\\.|\"\")*\"?|\b0x[0-9a-f]+\b|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b",
                       re.IGNORECASE | re.DOTALL)


def normalize(sql: str) -> str:
    """`sql` with every literal replaced by `?`, everything else as written."""
    try:
        tokens = _TOKENIZER.tokenize(sql)
    except Exception:  # noqa: BLE001 - sqlglot raises several types; any means: fall back
        return _FALLBACK.sub("?", sql)
    parts, pos = [], 0
    for token in tokens:  # a literal's span covers its quotes and prefix (x'..', N'..')
        if token.token_type in _LITERALS:
            parts.append(sql[pos:token.start])
            parts.append("?")
            pos = token.end + 1
    parts.append(sql[pos:])
    return "".join(parts)


def fingerprint(sql: str) -> str:
    """16 hex digits naming the statement's shape: equal for statements differing only in
    literals, whitespace or keyword case."""
    try:
        tokens = _TOKENIZER.tokenize(sql)
        shape = " ".join("?" if t.token_type in _LITERALS else
                         (t.text if t.token_type in (TokenType.IDENTIFIER, TokenType.VAR) else t.text.upper())
                         for t in tokens)
    except Exception:  # noqa: BLE001
        shape = " ".join(_FALLBACK.sub("?", sql).split()).upper()
    return hashlib.sha256(shape.encode("utf-8")).hexdigest()[:16]

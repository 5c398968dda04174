"""A statement's shape: its tokens with literal values masked. One tokenization gives the three
things the proxy keys by it:

- `Shape.key`, under which one analysis serves `... WHERE id = 5` and `... WHERE id = 6`
  without parsing again (proxy.authz.cache.AnalysisCache);
- `Shape.fingerprint`, 16 hex digits every statement event carries (statements differing only
  in literals, whitespace or keyword case share it);
- `Shape.tokens`, handed to the analyzer on a cache miss so that it does not tokenize again.

Two statements share a key only if they tokenize to the same token types and texts with literal
values masked: same keywords, identifiers (quoted or not), operators and punctuation in the
same order. A statement gets no key (None: analyze it in full) unless it is plainly safe to
normalize:
- printable ASCII plus tab/newline/CR only (the analyzer refuses control characters and Unicode
  spaces that sqlglot and MySQL read differently; those must reach it);
- no comments of any kind (executable comments are comments to the tokenizer);
- one statement whose first keyword is SELECT, WITH, INSERT, UPDATE or DELETE: statements where
  a literal decides what happens (SET sql_mode = '...', KILL 5, PREPARE s FROM '...') never get
  one.
The key is the whole token sequence, never a hash of it: a hash collision between a statement
that is allowed and one that is not would hand the second the first one's analysis.

`normalize` is the text written instead of a statement when `audit.redact_literals` is on
(`SELECT * FROM t WHERE ssn = ?`). The tokenizer is the analyzer's (proxy.authz.lexer), so a
string holding a quote or a comment marker can neither leak a literal nor hide a keyword."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sqlglot.tokens import Token, TokenType

from proxy.authz.lexer import raw_tokens

_PLAIN = re.compile(r"[\t\n\r\x20-\x7e]*")
_LITERALS = frozenset({
    TokenType.NUMBER, TokenType.STRING, TokenType.HEX_STRING, TokenType.BIT_STRING,
    TokenType.NATIONAL_STRING, TokenType.BYTE_STRING,
})
_NAMES = frozenset({TokenType.IDENTIFIER, TokenType.VAR})
_FIRST = frozenset({TokenType.SELECT, TokenType.WITH, TokenType.INSERT, TokenType.UPDATE, TokenType.DELETE})
# When the tokenizer gives up (unterminated strings...): blank anything quote- or digit-like.
_FALLBACK = re.compile(r"'(?:[^'\\]|\\.|'')*'?|\"(?:[^\"\\]|\\.|\"\")*\"?|\b0x[0-9a-f]+\b|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b",
                       re.IGNORECASE | re.DOTALL)

Key = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Shape:
    sql: str
    key: Key | None
    tokens: list[Token] | None  # None: the tokenizer refused the text

    @property
    def fingerprint(self) -> str:
        """Computed when asked (a cache miss), not for every statement a key serves."""
        if self.tokens is None:
            return _digest(" ".join(_FALLBACK.sub("?", self.sql).split()).upper())
        return _digest(" ".join("?" if t.token_type in _LITERALS else t.text if t.token_type in _NAMES
                                else t.text.upper() for t in self.tokens))


def shape(sql: str) -> Shape:
    try:
        tokens = raw_tokens(sql)
    except Exception:  # noqa: BLE001 - sqlglot raises several types; any means: no tokens
        return Shape(sql, None, None)
    return Shape(sql, _key(sql, tokens), tokens)


def fingerprint(sql: str) -> str:
    return shape(sql).fingerprint


def normalize(sql: str) -> str:
    """`sql` with every literal replaced by `?`, everything else as written."""
    try:
        tokens = raw_tokens(sql)
    except Exception:  # noqa: BLE001
        return _FALLBACK.sub("?", sql)
    parts, pos = [], 0
    for token in tokens:  # a literal's span covers its quotes and prefix (x'..', N'..')
        if token.token_type in _LITERALS:
            parts.append(sql[pos:token.start])
            parts.append("?")
            pos = token.end + 1
    parts.append(sql[pos:])
    return "".join(parts)


def _key(sql: str, tokens: list[Token]) -> Key | None:
    if not tokens or tokens[0].token_type not in _FIRST or not _PLAIN.fullmatch(sql):
        return None
    key: list[object] = []
    for tok in tokens:
        if tok.comments or tok.token_type is TokenType.SEMICOLON:
            return None
        key.append(tok.token_type if tok.token_type in _LITERALS else (tok.token_type, tok.text))
    return tuple(key)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

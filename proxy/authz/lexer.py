"""Tokens: lexing with sqlglot's MySQL tokenizer, the lexical checks every statement passes before
anything else looks at it, and a cursor for the statements read straight from their tokens.

Lexical checks (each denies): executable comments (`/*!`, `/*M!`), `SET_VAR` hints, quotes
inside hints, control or unusual Unicode space characters outside strings, NUL, more than one
statement, nesting deeper than `MAX_PAREN_DEPTH`.
"""

from __future__ import annotations

from collections.abc import Iterator

import re
from bisect import bisect_right

from sqlglot.dialects.mysql import MySQL
from sqlglot.tokens import Token, TokenType

from proxy.authz import functions
from proxy.authz.model import DenyCode
from proxy.authz.outcome import Denied

DIALECT = MySQL()
MAX_PAREN_DEPTH = 100


class _Tokenizer(MySQL.Tokenizer):
    """sqlglot swallows everything after a leading CALL, PREPARE, EXECUTE, LOCK TABLES, REPLACE,
    RENAME ... into one string token (its "command" fallback), which would hide comments,
    characters and `;` from the lexical checks. Here every statement is tokenized in full."""

    COMMANDS: set[TokenType] = set()

STRINGISH = frozenset(
    getattr(TokenType, name)
    for name in """
    STRING NATIONAL_STRING HEX_STRING BIT_STRING BYTE_STRING RAW_STRING HEREDOC_STRING
    UNICODE_STRING NATIONAL_RAW_STRING
    """.split()
    if hasattr(TokenType, name)
)
_NOT_WORDS = STRINGISH | {TokenType.IDENTIFIER, TokenType.NUMBER}
# Token types compared by identity, and sets of them keyed by id(): Enum equality and hashing run
# Python code, which costs more than the rest of a token pass.
STRINGISH_IDS = frozenset(id(t) for t in STRINGISH)
NOT_WORD_IDS = frozenset(id(t) for t in _NOT_WORDS)
T_SEMI = TokenType.SEMICOLON
T_LPAREN = TokenType.L_PAREN
T_RPAREN = TokenType.R_PAREN
T_IDENT = TokenType.IDENTIFIER
T_DOT = TokenType.DOT
T_STAR = TokenType.STAR
T_INTO = TokenType.INTO
T_HINT = TokenType.HINT
T_WITH = TokenType.WITH
_WORD = re.compile(r"[0-9A-Za-z_$\u0080-\uffff]+(?: [0-9A-Za-z_$\u0080-\uffff]+)*\Z")
IDENT = re.compile(r"[0-9A-Za-z_$\u0080-\uffff]+\Z")
DIGITS = re.compile(r"[0-9]{1,20}\Z")
_EXEC_COMMENT = re.compile(r"/\*[mM]?!")
# Controls other than tab/LF/CR, and Unicode spaces/format characters: sqlglot splits tokens on
# anything str.isspace() accepts, MySQL only on ASCII whitespace, so such characters could make
# the two read different statements. They are allowed inside string literals only.
_ODD_CHAR = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\xa0\xad\u1680\u180e\u2000-\u200f"
    "\u2028-\u202f\u205f-\u206f\u3000\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


# A whole statement that is one versioned executable comment, as mysqldump writes its session
# settings: `/*!40101 SET NAMES utf8mb4 */;` (MySQL and MariaDB run the text when their version
# is at least 4.01.01), `/*M!100616 SET ... */` (MariaDB only), `/*! SET ... */` (always).
_WRAPPED = re.compile(
    r"[ \t\r\n]*/\*(?:!(?:[0-9]{5}(?=[ \t\r\n]))?|M![0-9]{6}(?=[ \t\r\n]))"
    r"(.*)\*/[ \t\r\n]*;?[ \t\r\n]*",
    re.S,
)
_SET = re.compile(r"[ \t\r\n]*SET[ \t\r\n]", re.I)


def unwrap_executable_comment(sql: str) -> str | None:
    """The SET statement a statement made of one executable comment holds (`/*!40101 SET
    @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */`), or None. The server runs
    that text (or nothing, when the comment's version is above its own), so it is authorized
    as that text. Only SET statements (mysqldump's header and footer), and only when the text
    holds no other comment delimiter, so that the server's comment ends exactly where this one
    does; anything else made of one executable comment is refused here, and any other
    statement holding one by the lexical checks."""
    m = _WRAPPED.fullmatch(sql)
    if m is None:
        return None
    inner = m.group(1)
    if "/*" in inner or "*/" in inner or not _SET.match(inner):
        raise Denied(
            DenyCode.EXECUTABLE_COMMENT,
            "executable comments (/*! ... */) are not allowed, except one holding a whole SET "
            "statement and no other comment delimiter",
        )
    return inner


def raw_tokens(sql: str) -> list[Token]:
    """Every token of `sql`, before any check (TokenError when sqlglot cannot tokenize it)."""
    return _Tokenizer(dialect=DIALECT).tokenize(sql)


def tokenize(sql: str, tokens: list[Token] | None = None) -> list[Token]:
    """The tokens of one statement, after every lexical check (a trailing `;` dropped).
    `tokens`: `raw_tokens(sql)` when the caller has them already."""
    if "\x00" in sql:
        raise Denied(DenyCode.PARSE_ERROR, "the statement contains a NUL character")
    if tokens is None:
        tokens = raw_tokens(sql)
    _check_lexical(sql, tokens)
    return _single_statement(tokens)


def _check_lexical(sql: str, tokens: list[Token]) -> None:
    spans = [(t.start, t.end) for t in tokens if id(t.token_type) in STRINGISH_IDS]
    starts = [start for start, _ in spans]

    def outside_strings(pos: int) -> bool:
        i = bisect_right(starts, pos) - 1
        return i < 0 or pos > spans[i][1]

    for m in _EXEC_COMMENT.finditer(sql):
        if outside_strings(m.start()):
            raise Denied(
                DenyCode.EXECUTABLE_COMMENT, "executable comments (/*! ... */) are not allowed"
            )
    for tok in tokens:
        for comment in tok.comments:
            if comment.startswith("!") or comment[:2] in ("M!", "m!"):
                raise Denied(
                    DenyCode.EXECUTABLE_COMMENT, "executable comments (/*! ... */) are not allowed"
                )
    start = sql.find("/*+")
    while start != -1:
        if outside_strings(start):
            end = sql.find("*/", start + 3)
            body = sql[start + 3 : end if end != -1 else len(sql)]
            if "SET_VAR" in body.upper():
                raise Denied(DenyCode.SYSTEM_VARIABLE, "SET_VAR optimizer hints are not allowed")
            if any(q in body for q in "'\"`"):
                raise Denied(
                    DenyCode.PARSE_ERROR, "quotes inside optimizer hints are not supported"
                )
        start = sql.find("/*+", start + 3)
    for m in _ODD_CHAR.finditer(sql):
        if outside_strings(m.start()):
            raise Denied(
                DenyCode.PARSE_ERROR,
                "the statement contains a control character or an unusual space "
                f"(U+{ord(m.group()):04X})",
            )


def _single_statement(tokens: list[Token]) -> list[Token]:
    """The tokens of the one statement (a trailing `;` dropped); also bounds nesting depth."""
    if tokens and tokens[-1].token_type is T_SEMI:
        tokens = tokens[:-1]
    if not tokens:
        raise Denied(DenyCode.EMPTY_STATEMENT, "the statement is empty")
    if tokens[-1].token_type is TokenType.COMMA:
        # Never valid MySQL; sqlglot silently drops it (`SELECT * FROM t ,`).
        raise Denied(DenyCode.PARSE_ERROR, "the statement ends with a comma")
    depth = 0
    for t in tokens:
        tt = t.token_type
        if tt is T_LPAREN:
            depth += 1
            if depth > MAX_PAREN_DEPTH:
                raise Denied(DenyCode.PARSE_ERROR, "the statement is nested too deeply")
        elif tt is T_RPAREN:
            depth -= 1
        elif tt is T_SEMI:
            raise Denied(DenyCode.MULTIPLE_STATEMENTS, "send one statement at a time")
    return tokens


def top_level(tokens: list[Token], start: int = 0) -> Iterator[tuple[int, Token]]:
    """(index, token) of the tokens from `start` that are outside every parenthesis."""
    depth = 0
    for i in range(start, len(tokens)):
        tok = tokens[i]
        tt = tok.token_type
        if tt is T_LPAREN:
            depth += 1
        elif tt is T_RPAREN:
            depth -= 1
        elif depth == 0:
            yield i, tok


def word(tok: Token | None) -> str | None:
    """The upper-cased keyword/word a token spells, or None (quoted, string, number, symbol)."""
    if tok is None or id(tok.token_type) in NOT_WORD_IDS or not _WORD.match(tok.text):
        return None
    return " ".join(tok.text.upper().split())


def retyped(tok: Token, token_type: TokenType) -> Token:
    """`tok` read as another keyword (REPLACE as INSERT, DO as SELECT), at the same position."""
    return Token(
        token_type, token_type.name, tok.line, tok.col, tok.start, tok.end, list(tok.comments)
    )


def leading_words(tokens: list[Token], count: int) -> str:
    words = [w for w in (word(t) for t in tokens[:count]) if w]
    return " ".join(words)


class Cursor:
    """Reads a statement with a small fixed grammar token by token; every mismatch denies."""

    __slots__ = ("tokens", "i")

    def __init__(self, tokens: list[Token], i: int = 0) -> None:
        self.tokens = tokens
        self.i = i

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def word(self) -> str | None:
        return word(self.peek())

    def accept(self, *words: str) -> str | None:
        w = self.word()
        if w is not None and w in words:
            self.i += 1
            return w
        return None

    def expect(self, *words: str) -> str:
        w = self.accept(*words)
        if w is None:
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")
        return w

    def accept_type(self, token_type: TokenType) -> Token | None:
        tok = self.peek()
        if tok is not None and tok.token_type is token_type:
            self.i += 1
            return tok
        return None

    def expect_type(self, token_type: TokenType) -> Token:
        tok = self.accept_type(token_type)
        if tok is None:
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")
        return tok

    def at_end(self) -> bool:
        return self.i >= len(self.tokens)

    def expect_end(self) -> None:
        if not self.at_end():
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")

    def ident(self) -> str:
        tok = self.peek()
        if tok is not None:
            if tok.token_type is T_IDENT:
                self.i += 1
                return tok.text
            if id(tok.token_type) not in NOT_WORD_IDS and IDENT.match(tok.text):
                if tok.text.upper() in functions.MYSQL_RESERVED:
                    raise Denied(
                        DenyCode.SUSPICIOUS_NAME,
                        f"a name spelled like the keyword {tok.text.upper()} must be backquoted",
                    )
                self.i += 1
                return tok.text
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "expected a name")

    def user_variable(self, detail: str) -> None:
        """`@name` (also `@'name'`, `` @`name` ``), written without a space after `@`."""
        at = self.accept_type(TokenType.PARAMETER)
        tok = self.peek()
        if (
            at is None
            or tok is None
            or tok.start != at.end + 1
            or tok.token_type not in (TokenType.VAR, TokenType.IDENTIFIER, TokenType.STRING)
        ):
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, detail)
        self.i += 1

    def table_name(self) -> tuple[str | None, str]:
        first = self.ident()
        if self.accept_type(TokenType.DOT) is not None:
            return first, self.ident()
        return None, first

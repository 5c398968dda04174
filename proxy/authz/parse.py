"""Tokens -> one sqlglot tree, after token-level repairs of known sqlglot mis-parses and the
checks that need the exact spelling.

Repairs: the LOW_PRIORITY / QUICK / IGNORE / DELAYED / HIGH_PRIORITY modifiers (sqlglot reads a
table named LOW_PRIORITY) and `DELETE t.*` (sqlglot rejects it) are dropped; they change neither
the tables touched nor the privileges needed. Checks: INTO anywhere but INSERT's target, two
consecutive WITH clauses (sqlglot merges them, MySQL rejects them), and every `name(` call
spelling (`functions.check_token_call`).

MariaDB syntax sqlglot's MySQL dialect does not read, rewritten after the checks into the
spelling sqlglot reads with the same meaning for authorization (sqlglot's parser is compiled:
it cannot be subclassed, so the MariaDB dialect lives here, at token level):
- `NEXT VALUE FOR s` / `PREVIOUS VALUE FOR s` -> `NEXTVAL(s)` / `LASTVAL(s)` (the same function);
- `NATIONAL CHAR(n)`, `NATIONAL VARCHAR(n)`, `NCHAR VARCHAR(n)` ... in a type position -> the
  type without NATIONAL (it only picks the column's character set);
- `VALUES(t.c)` after ON DUPLICATE KEY UPDATE, `t` the INSERT's target -> `VALUES(c)` (it names
  the value being inserted into that column either way);
- ALTER TABLE's `ADD INDEX|KEY|UNIQUE|FULLTEXT|SPATIAL|FOREIGN KEY|CONSTRAINT ... IF NOT EXISTS`
  and `MODIFY|CHANGE [COLUMN] IF EXISTS` -> without the IF [NOT] EXISTS (what to do when the
  object exists already, not what is touched).
- a table value constructor where a query may start (the statement's first word, a CTE's body,
  a derived table, after UNION / EXCEPT / INTERSECT, `IN (`): `VALUES (..), (..)` ->
  `SELECT * FROM (VALUES (..), (..)) AS _jitproxy_tvc` (sqlglot reads `VALUES (` there as MySQL's
  VALUES() function; the rows' expressions, subqueries included, are read as they are).
The RETURNING list of INSERT / REPLACE / DELETE is parsed apart (`split_returning`).
A statement sqlglot gives up on (it falls back to an opaque `Command`) is a parse error.
"""

from __future__ import annotations

import logging

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from proxy.authz import functions
from proxy.authz.model import DenyCode
from proxy.authz.outcome import Denied
from proxy.authz.lexer import (
    top_level,
    DIALECT,
    retyped,
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
    tree = trees[0]
    if isinstance(tree, exp.Command):
        # sqlglot read the first word and gave up on the rest
        what = str(tree.this).upper() if isinstance(tree.this, str) else "statement"
        raise Denied(
            DenyCode.PARSE_ERROR,
            f"the statement could not be parsed (jitproxy does not read this form of {what})",
        )
    return tree


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
    if "VALUE" in upper_sql and "FOR" in upper_sql:
        tokens = _sequence_value_for(tokens)
    if "NATIONAL" in upper_sql or "NCHAR" in upper_sql:
        tokens = _national_types(tokens)
    if into_at > 0 and "DUPLICATE" in upper_sql:
        tokens = _unqualified_values(tokens, into_at)
    if tokens[0].token_type is TokenType.ALTER and " IF " in f" {' '.join(upper_sql.split())} ":
        tokens = _alter_if_exists(tokens)
    if "VALUES" in upper_sql and tokens[0].token_type is not TokenType.INSERT:
        tokens = _table_value_constructors(tokens)
    return tokens


# -- MariaDB syntax, rewritten for sqlglot --------------------------------------------------------


def _synthetic(like: Token, token_type: TokenType, text: str) -> Token:
    return Token(token_type, text, like.line, like.col, like.start, like.end, [])


def _name_end(tokens: list[Token], i: int) -> int:
    """The index after a `name` or `db.name` starting at `i` (unquoted words or backquoted
    identifiers), or -1."""

    def is_name(k: int) -> bool:
        if k >= len(tokens):
            return False
        tok = tokens[k]
        return tok.token_type is T_IDENT or (
            id(tok.token_type) not in NOT_WORD_IDS and IDENT.match(tok.text) is not None
        )

    if not is_name(i):
        return -1
    if i + 2 < len(tokens) and tokens[i + 1].token_type is T_DOT and is_name(i + 2):
        return i + 3
    return i + 1


_SEQUENCE_SPELLINGS = {"NEXT": "NEXTVAL", "PREVIOUS": "LASTVAL"}


def _sequence_value_for(tokens: list[Token]) -> list[Token]:
    """`NEXT VALUE FOR s` -> `NEXTVAL(s)`, `PREVIOUS VALUE FOR s` -> `LASTVAL(s)`: MariaDB's
    grammar reads both spellings into the same function (the name after FOR is a sequence, not
    an expression)."""
    out: list[Token] = []
    n, i = len(tokens), 0
    while i < n:
        tok = tokens[i]
        function = _SEQUENCE_SPELLINGS.get(word(tok) or "")
        if (
            function is not None
            and i + 2 < n
            and word(tokens[i + 1]) == "VALUE"
            and tokens[i + 2].token_type is TokenType.FOR
        ):
            end = _name_end(tokens, i + 3)
            if end < 0:
                raise Denied(
                    DenyCode.PARSE_ERROR,
                    f"{word(tok)} VALUE FOR must be followed by a sequence name",
                )
            out.append(_synthetic(tok, TokenType.VAR, function))
            out.append(_synthetic(tokens[i + 2], T_LPAREN, "("))
            out.extend(tokens[i + 3 : end])
            out.append(_synthetic(tokens[end - 1], T_RPAREN, ")"))
            i = end
            continue
        out.append(tok)
        i += 1
    return out


_SET_OPERATIONS = frozenset({TokenType.UNION, TokenType.EXCEPT, TokenType.INTERSECT})
# What may stand before `(` for the parenthesis to open a query (a CTE's body, a derived table,
# a subquery of IN / EXISTS / ANY, a parenthesized query).
_BEFORE_QUERY_PAREN = frozenset({TokenType.ALIAS, TokenType.FROM, TokenType.JOIN, TokenType.IN, TokenType.EXISTS,
                                 TokenType.ANY, TokenType.ALL, TokenType.SOME, T_LPAREN, *_SET_OPERATIONS})


def _starts_query(tokens: list[Token], i: int) -> bool:
    """Is tokens[i] where a query may begin?"""
    if i == 0:
        return True
    prev = tokens[i - 1].token_type
    if prev in _SET_OPERATIONS:
        return True
    if prev in (TokenType.ALL, TokenType.DISTINCT) and i >= 2 and tokens[i - 2].token_type in _SET_OPERATIONS:
        return True
    return prev is T_LPAREN and (i == 1 or tokens[i - 2].token_type in _BEFORE_QUERY_PAREN)


def _table_value_constructors(tokens: list[Token]) -> list[Token]:
    """`VALUES (row), (row)...` where a query may begin -> `SELECT * FROM (VALUES ...) AS
    _jitproxy_tvc`: the same rows, in the spelling sqlglot reads as a table of values."""
    out: list[Token] = []
    n, i = len(tokens), 0
    while i < n:
        tok = tokens[i]
        if tok.token_type is TokenType.VALUES and i + 1 < n and tokens[i + 1].token_type is T_LPAREN \
                and _starts_query(tokens, i):
            end = i + 1
            while True:  # one `( ... )` row, then `,` and another, or the end of the rows
                depth, k = 0, end
                while k < n:
                    if tokens[k].token_type is T_LPAREN:
                        depth += 1
                    elif tokens[k].token_type is T_RPAREN:
                        depth -= 1
                        if depth == 0:
                            break
                    k += 1
                if k >= n:
                    raise Denied(DenyCode.PARSE_ERROR, "a VALUES row is not closed")
                end = k + 1
                if end + 1 < n and tokens[end].token_type is TokenType.COMMA and tokens[end + 1].token_type is T_LPAREN:
                    end += 1
                    continue
                break
            out += [_synthetic(tok, TokenType.SELECT, "SELECT"), _synthetic(tok, TokenType.STAR, "*"),
                    _synthetic(tok, TokenType.FROM, "FROM"), _synthetic(tok, T_LPAREN, "(")]
            out += tokens[i:end]
            out += [_synthetic(tokens[end - 1], T_RPAREN, ")"), _synthetic(tokens[end - 1], TokenType.ALIAS, "AS"),
                    _synthetic(tokens[end - 1], TokenType.VAR, "_jitproxy_tvc")]
            i = end
            continue
        out.append(tok)
        i += 1
    return out


# Words that can precede a column name in a column definition: the word after one is a name,
# not a type, even when it reads NATIONAL or NCHAR (`CREATE TABLE t (national CHAR(3))`).
_BEFORE_COLUMN_NAME = frozenset({"ADD", "COLUMN", "MODIFY", "CHANGE", "EXISTS", "FIRST", "AFTER"})
_CHAR_TYPES = frozenset({TokenType.CHAR, TokenType.VARCHAR, TokenType.NCHAR, TokenType.NVARCHAR})


def _national_types(tokens: list[Token]) -> list[Token]:
    """`NATIONAL CHAR(n)` -> `CHAR(n)`, `NATIONAL [CHARACTER] VARYING` / `NCHAR VARCHAR` /
    `NCHAR VARYING` -> `VARCHAR`: MariaDB's national types are CHAR / VARCHAR in utf8mb3. Only
    in a type position: after a column name (a word that does not itself follow `(`, `,` or a
    word that introduces a column name) or after CAST's AS."""
    out: list[Token] = []
    n, i = len(tokens), 0
    while i < n:
        tok = tokens[i]
        w = word(tok)
        nxt = tokens[i + 1] if i + 1 < n else None
        if w in ("NATIONAL", "NCHAR") and nxt is not None and out and _type_position(out):
            if w == "NATIONAL" and nxt.token_type in _CHAR_TYPES:
                i += 1  # the type that follows stands for itself
                continue
            if w == "NCHAR" and (nxt.token_type is TokenType.VARCHAR or word(nxt) == "VARYING"):
                out.append(_synthetic(tok, TokenType.VARCHAR, "VARCHAR"))
                i += 2
                continue
        out.append(tok)
        i += 1
    return out


def _type_position(before: list[Token]) -> bool:
    prev = before[-1]
    if prev.token_type is TokenType.ALIAS:  # CAST(x AS NATIONAL CHAR)
        return True
    is_name = prev.token_type is T_IDENT or (
        id(prev.token_type) not in NOT_WORD_IDS
        and IDENT.match(prev.text) is not None
        and word(prev) not in _BEFORE_COLUMN_NAME
    )
    if not is_name or len(before) < 2:
        return False
    ahead = before[-2]
    if ahead.token_type in (T_LPAREN, TokenType.COMMA) or word(ahead) in _BEFORE_COLUMN_NAME:
        return True
    # CHANGE [COLUMN] old new <type>
    return len(before) >= 3 and word(before[-3]) in ("CHANGE", "COLUMN")


def _depth_zero_words(tokens: list[Token]) -> list[tuple[int, str | None]]:
    return [(i, word(tok)) for i, tok in top_level(tokens)]


def _unqualified_values(tokens: list[Token], into_at: int) -> list[Token]:
    """`... ON DUPLICATE KEY UPDATE c = VALUES(t.c)` -> `VALUES(c)` when `t` (or `db.t`) is the
    INSERT's target: sqlglot reads only a bare column name there. Any other qualifier is left
    for the parser to refuse."""
    words = _depth_zero_words(tokens)
    start = next(
        (
            i
            for k, (i, w) in enumerate(words)
            if w == "ON" and [x for _, x in words[k + 1 : k + 4]] == ["DUPLICATE", "KEY", "UPDATE"]
        ),
        -1,
    )
    if start < 0:
        return tokens
    # the target: INSERT [hint] [INTO] name | db.name
    i = into_at + 1 if word(tokens[into_at]) == "INTO" else into_at
    end = _name_end(tokens, i)
    if end < 0:
        return tokens
    target = [t.text for t in tokens[i:end:2]]
    out = tokens[:start]
    k, n = start, len(tokens)
    while k < n:
        tok = tokens[k]
        if (
            tok.token_type is TokenType.VALUES
            and k + 1 < n
            and tokens[k + 1].token_type is T_LPAREN
        ):
            name_end = _name_end(tokens, k + 2)
            if name_end > 0 and name_end < n and tokens[name_end].token_type is T_DOT:
                # VALUES(a.b.c): db.table.column
                column_end = _name_end(tokens, name_end + 1)
                qualifier = [t.text for t in tokens[k + 2 : name_end : 2]]
                column = tokens[name_end + 1 : column_end] if column_end == name_end + 2 else []
            elif name_end == k + 5:  # VALUES(t.c)
                qualifier = [tokens[k + 2].text]
                column = [tokens[k + 4]]
                column_end = name_end
            else:
                qualifier, column, column_end = [], [], -1
            if (
                column
                and column_end < n
                and tokens[column_end].token_type is T_RPAREN
                and _same_table(qualifier, target)
            ):
                out += [tok, tokens[k + 1], *column, tokens[column_end]]
                k = column_end + 1
                continue
        out.append(tok)
        k += 1
    return out


def _same_table(qualifier: list[str], target: list[str]) -> bool:
    """`t` or `db.t` names the target `t` / `db.t` (names compared as MariaDB compares table
    names on a case-sensitive file system; the database only when both give one)."""
    if not qualifier or len(qualifier) > 2:
        return False
    if qualifier[-1] != target[-1]:
        return False
    return len(qualifier) == 1 or len(target) == 1 or qualifier[0] == target[0]


_IF_NOT_EXISTS_AFTER = frozenset(
    {"INDEX", "KEY", "UNIQUE", "FULLTEXT", "SPATIAL", "FOREIGN KEY", "CONSTRAINT"}
)
_IF_EXISTS_AFTER = frozenset({"MODIFY", "CHANGE"})


def _alter_if_exists(tokens: list[Token]) -> list[Token]:
    """ALTER TABLE actions with MariaDB's IF [NOT] EXISTS that sqlglot does not read."""
    out: list[Token] = []
    depth, i, n = 0, 0, len(tokens)
    while i < n:
        tok = tokens[i]
        tt = tok.token_type
        if tt is T_LPAREN:
            depth += 1
        elif tt is T_RPAREN:
            depth -= 1
        elif depth == 0 and word(tok) == "IF" and out:
            prev = word(out[-1])
            if prev == "COLUMN" and len(out) > 1:
                prev = word(out[-2]) if word(out[-2]) in _IF_EXISTS_AFTER else prev
            after = [word(t) for t in tokens[i + 1 : i + 3]]
            if prev in _IF_NOT_EXISTS_AFTER and after == ["NOT", "EXISTS"]:
                i += 3
                continue
            if prev in _IF_EXISTS_AFTER and after[:1] == ["EXISTS"]:
                i += 2
                continue
        out.append(tok)
        i += 1
    return out


def split_returning(tokens: list[Token]) -> tuple[list[Token], list[Token] | None]:
    """INSERT / REPLACE / DELETE ... RETURNING list: (the statement without it, the list's tokens
    after a SELECT keyword, or None). MariaDB's RETURNING is always last; sqlglot does not read
    it after DELETE's ORDER BY / LIMIT."""
    for i, w in _depth_zero_words(tokens):
        if tokens[i].token_type is TokenType.RETURNING:
            if i + 1 >= len(tokens):
                raise Denied(DenyCode.PARSE_ERROR, "RETURNING without a select list")
            return tokens[:i], [retyped(tokens[i], TokenType.SELECT), *tokens[i + 1 :]]
    return tokens, None


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
    """`DELETE t.* FROM ...` / `DELETE FROM t.* USING ...` -> without `.*` (sqlglot rejects it).
    Not in a RETURNING list, where `t.*` means every column of t."""
    out: list[Token] = []
    depth, i, n = 0, 0, len(tokens)
    while i < n:
        tok = tokens[i]
        tt = tok.token_type
        if depth == 0 and tt is TokenType.RETURNING:
            out.extend(tokens[i:])
            break
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
    for _, tok in top_level(tokens, 1):
        tt = tok.token_type
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

"""Statement analysis: SQL text + current database -> `Analysis` (what the statement needs).

Pure: no I/O, no clock, no logging; `analyze` never raises. Fail closed: a statement is allowed
only through an explicit branch below; everything else is DENIED with a reason code.

The pipeline (each step can deny):
1. lexical checks on the raw text and sqlglot's MySQL tokens: executable comments (`/*!`,
   `/*M!`), `SET_VAR` hints, control or unusual Unicode space characters, exactly one statement,
   nesting depth;
2. dispatch on the leading keyword to an allow-list of statement classes. Simple statements with
   a fixed grammar (SHOW, DESCRIBE, USE, KILL, BEGIN/COMMIT/ROLLBACK, SET TRANSACTION) are read
   straight from the tokens; the rest are parsed by sqlglot, and the parse must produce the
   expression type the keyword promises (sqlglot falls back to `Command`, or silently to an
   `Alias`/`Column`, for statements it does not know);
3. token-level repairs of known sqlglot mis-parses (the LOW_PRIORITY/QUICK/IGNORE/DELAYED/
   HIGH_PRIORITY modifiers, `DELETE t.*`) and function-name checks that need the exact spelling
   (`functions.check_token_call`);
4. one walk over the tree that resolves every table with MySQL's CTE visibility rules (a CTE is
   visible in its WITH clause's statement and to later CTEs of the same clause; to itself only
   under RECURSIVE; names compare case-sensitively), checks every function call, and collects
   reads; statement handlers mark write targets and alias references first;
5. cross-check: every `exp.Table` in the tree must have been classified by the walk.

CTE resolution is our own walk rather than `sqlglot.optimizer.qualify_tables`: the latter
rewrites the tree, costs about as much as parsing (≈120 µs for a 3-join SELECT) and does not see
DML targets; the test suite checks the two agree on real tables (tests/authz).
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable

from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from proxy.authz import functions
from proxy.authz.model import (
    Analysis,
    Deny,
    DenyCode,
    Privilege,
    Requirement,
    StatementKind,
    TableRef,
)
from proxy.authz.names import canonical_db, canonical_table


class _DropCommandFallbackWarning(logging.Filter):
    """sqlglot logs a warning, with the start of the SQL text, whenever it falls back to
    `exp.Command`. Those statements are denied here anyway, and statement text must not reach
    operator logs from the analyzer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in str(record.msg)


logging.getLogger("sqlglot").addFilter(_DropCommandFallbackWarning())

_DIALECT = MySQL()
MAX_PAREN_DEPTH = 100

_STRINGISH = frozenset(
    getattr(TokenType, name)
    for name in """
    STRING NATIONAL_STRING HEX_STRING BIT_STRING BYTE_STRING RAW_STRING HEREDOC_STRING
    UNICODE_STRING NATIONAL_RAW_STRING
    """.split()
    if hasattr(TokenType, name)
)
_NOT_WORDS = _STRINGISH | {TokenType.IDENTIFIER, TokenType.NUMBER}
# Token types compared by identity, and sets of them keyed by id(): Enum equality and hashing run
# Python code, which costs more than the rest of a token pass.
_STRINGISH_IDS = frozenset(id(t) for t in _STRINGISH)
_NOT_WORD_IDS = frozenset(id(t) for t in _NOT_WORDS)
_T_SEMI = TokenType.SEMICOLON
_T_LPAREN = TokenType.L_PAREN
_T_RPAREN = TokenType.R_PAREN
_T_IDENT = TokenType.IDENTIFIER
_T_DOT = TokenType.DOT
_T_STAR = TokenType.STAR
_T_INTO = TokenType.INTO
_T_HINT = TokenType.HINT
_T_WITH = TokenType.WITH
_WORD = re.compile(r"[0-9A-Za-z_$\u0080-\uffff]+(?: [0-9A-Za-z_$\u0080-\uffff]+)*\Z")
_IDENT = re.compile(r"[0-9A-Za-z_$\u0080-\uffff]+\Z")
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
_EXEC_COMMENT = re.compile(r"/\*[mM]?!")
# Controls other than tab/LF/CR, and Unicode spaces/format characters: sqlglot splits tokens on
# anything str.isspace() accepts, MySQL only on ASCII whitespace, so such characters could make
# the two read different statements. They are allowed inside string literals only.
_ODD_CHAR = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\xa0\xad\u1680\u180e\u2000-\u200f"
    "\u2028-\u202f\u205f-\u206f\u3000\ufeff\ufff9-\ufffb\ud800-\udfff]"
)

# Statement modifiers sqlglot mis-parses (a table named LOW_PRIORITY) or rejects; they change
# neither the tables touched nor the privileges needed, so they are dropped before parsing.
_MODIFIERS = {
    id(TokenType.UPDATE): frozenset({"LOW_PRIORITY", "IGNORE"}),
    id(TokenType.DELETE): frozenset({"LOW_PRIORITY", "QUICK", "IGNORE"}),
    id(TokenType.INSERT): frozenset({"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE"}),
}
_MODIFIER_WORDS = frozenset({"LOW_PRIORITY", "QUICK", "IGNORE", "DELAYED", "HIGH_PRIORITY"})
# A word followed by `(` after these tokens names a table, CTE or index, not a function.
_NOT_A_CALL_AFTER = frozenset({"INTO", "TABLE", "REFERENCES", "WITH", "RECURSIVE", "KEY", "INDEX"})

# SET: session variables a client may change (names compare case-insensitively, as in MySQL).
SESSION_VARIABLES = frozenset(
    """
    autocommit time_zone transaction_isolation tx_isolation transaction_read_only tx_read_only
    sql_select_limit max_execution_time max_statement_time net_read_timeout net_write_timeout
    wait_timeout interactive_timeout group_concat_max_len sql_safe_updates sql_auto_is_null
    profiling div_precision_increment lc_time_names sql_quote_show_create
    innodb_lock_wait_timeout lock_wait_timeout
    """.split()
)
_CHARSET_VARIABLES = frozenset(
    {"character_set_client", "character_set_connection", "character_set_results"}
)
_COLLATION_VARIABLES = frozenset({"collation_connection"})
# Single-byte or UTF-8 charsets only: in gbk, big5, sjis, cp932, gb18030 ... a multibyte
# character can end in 0x5C (backslash), so the server and this parser would split strings
# differently.
ALLOWED_CHARSETS = frozenset({"utf8mb4", "utf8mb3", "utf8", "latin1", "ascii", "binary"})
_SESSION_KINDS = frozenset({"", "SESSION", "LOCAL"})

# CREATE/ALTER TABLE options. Engines that reach outside the table (FEDERATED, CONNECT, MERGE,
# SPIDER ...) and file placement options are not allowed.
ALLOWED_ENGINES = frozenset({"innodb", "myisam", "memory", "heap", "aria", "archive"})
_ALLOWED_NAMED_PROPERTIES = frozenset(
    """
    KEY_BLOCK_SIZE AVG_ROW_LENGTH MAX_ROWS MIN_ROWS PACK_KEYS STATS_PERSISTENT STATS_AUTO_RECALC
    STATS_SAMPLE_PAGES CHECKSUM DELAY_KEY_WRITE PAGE_CHECKSUM TRANSACTIONAL
    """.split()
)
_SIMPLE_TABLE_OPTIONS = (
    exp.CharacterSetProperty,
    exp.CollateProperty,
    exp.AutoIncrementProperty,
    exp.SchemaCommentProperty,
    exp.RowFormatProperty,
)
_ALTER_ACTIONS = (
    exp.ColumnDef,
    exp.ModifyColumn,
    exp.AlterColumn,
    exp.AddConstraint,
    exp.DropPrimaryKey,
    exp.RenameColumn,
    exp.RenameIndex,
    exp.ForceProperty,
)
_ALTER_DROP_KINDS = frozenset({"COLUMN", "INDEX", "KEY", "FOREIGN KEY", "CONSTRAINT", "CHECK"})

_TREE_CHECKED_FUNCS = tuple(getattr(exp, n) for n in sorted(functions.TREE_CHECKED_CLASS_NAMES))
_DENIED_FUNC_CLASSES = (exp.NextValueFor,)
_ANONYMOUS = (exp.Anonymous, exp.AnonymousAggFunc)

_READ, _WRITE, _ALIAS = 0, 1, 2
# Node types with no expression below them (a Column holds only identifiers).
_LEAVES = frozenset(
    {exp.Identifier, exp.Literal, exp.Var, exp.Star, exp.Null, exp.Boolean, exp.Placeholder}
)


class _Denied(Exception):
    def __init__(self, code: DenyCode, detail: str, statement_class: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.statement_class = statement_class


def _denied(code: DenyCode, detail: str, statement_class: str = "UNKNOWN") -> Analysis:
    return Analysis(
        kind=StatementKind.DENIED,
        statement_class=statement_class or "UNKNOWN",
        deny=Deny(code, detail),
    )


def analyze(sql: str, current_db: str | None) -> Analysis:
    """What `sql` needs when run with `current_db` as the default database (None: no database
    selected). Never raises: every failure is an Analysis with kind DENIED and a Deny."""
    try:
        if not isinstance(sql, str) or not (current_db is None or isinstance(current_db, str)):
            raise _Denied(DenyCode.PARSE_ERROR, "the statement is not text")
        return _analyze(sql, canonical_db(current_db) if current_db else None)
    except _Denied as d:
        return _denied(d.code, d.detail, d.statement_class)
    except RecursionError:
        return _denied(DenyCode.PARSE_ERROR, "the statement is nested too deeply")
    except (ParseError, TokenError) as e:
        return _denied(DenyCode.PARSE_ERROR, _parse_error_detail(e))
    except Exception:  # noqa: BLE001 - any analyzer defect must deny, never propagate
        return _denied(DenyCode.PARSE_ERROR, "the statement could not be analyzed")


def _parse_error_detail(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if errors and isinstance(errors[0], dict) and errors[0].get("line") is not None:
        return (
            "the statement could not be parsed "
            f"(line {errors[0].get('line')}, column {errors[0].get('col')})"
        )
    return "the statement could not be parsed"


def _analyze(sql: str, current_db: str | None) -> Analysis:
    if "\x00" in sql:
        raise _Denied(DenyCode.PARSE_ERROR, "the statement contains a NUL character")
    tokens = _DIALECT.tokenize(sql)
    _check_lexical(sql, tokens)
    tokens = _single_statement(tokens)
    return _statement(sql, tokens, current_db)


# ---------------------------------------------------------------------------------------------
# Lexical checks


def _check_lexical(sql: str, tokens: list[Token]) -> None:
    spans = [(t.start, t.end) for t in tokens if id(t.token_type) in _STRINGISH_IDS]
    starts = [start for start, _ in spans]

    def outside_strings(pos: int) -> bool:
        i = bisect_right(starts, pos) - 1
        return i < 0 or pos > spans[i][1]

    for m in _EXEC_COMMENT.finditer(sql):
        if outside_strings(m.start()):
            raise _Denied(
                DenyCode.EXECUTABLE_COMMENT, "executable comments (/*! ... */) are not allowed"
            )
    for tok in tokens:
        for comment in tok.comments:
            if comment.startswith("!") or comment[:2] in ("M!", "m!"):
                raise _Denied(
                    DenyCode.EXECUTABLE_COMMENT, "executable comments (/*! ... */) are not allowed"
                )
    start = sql.find("/*+")
    while start != -1:
        if outside_strings(start):
            end = sql.find("*/", start + 3)
            body = sql[start + 3 : end if end != -1 else len(sql)]
            if "SET_VAR" in body.upper():
                raise _Denied(DenyCode.SYSTEM_VARIABLE, "SET_VAR optimizer hints are not allowed")
            if any(q in body for q in "'\"`"):
                raise _Denied(
                    DenyCode.PARSE_ERROR, "quotes inside optimizer hints are not supported"
                )
        start = sql.find("/*+", start + 3)
    for m in _ODD_CHAR.finditer(sql):
        if outside_strings(m.start()):
            raise _Denied(
                DenyCode.PARSE_ERROR,
                "the statement contains a control character or an unusual space "
                f"(U+{ord(m.group()):04X})",
            )


def _single_statement(tokens: list[Token]) -> list[Token]:
    """The tokens of the one statement (a trailing `;` dropped); also bounds nesting depth."""
    if tokens and tokens[-1].token_type is _T_SEMI:
        tokens = tokens[:-1]
    if not tokens:
        raise _Denied(DenyCode.EMPTY_STATEMENT, "the statement is empty")
    depth = 0
    for t in tokens:
        tt = t.token_type
        if tt is _T_LPAREN:
            depth += 1
            if depth > MAX_PAREN_DEPTH:
                raise _Denied(DenyCode.PARSE_ERROR, "the statement is nested too deeply")
        elif tt is _T_RPAREN:
            depth -= 1
        elif tt is _T_SEMI:
            raise _Denied(DenyCode.MULTIPLE_STATEMENTS, "send one statement at a time")
    return tokens


def _word(tok: Token | None) -> str | None:
    """The upper-cased keyword/word a token spells, or None (quoted, string, number, symbol)."""
    if tok is None or id(tok.token_type) in _NOT_WORD_IDS or not _WORD.match(tok.text):
        return None
    return " ".join(tok.text.upper().split())


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
        if i < n and tokens[i].token_type is _T_HINT:
            out.append(tokens[i])
            i += 1
        while i < n and _word(tokens[i]) in mods:
            i += 1
    return out


def _strip_delete_star(tokens: list[Token]) -> list[Token]:
    """`DELETE t.* FROM ...` / `DELETE FROM t.* USING ...` -> without `.*` (sqlglot rejects it)."""
    out: list[Token] = []
    depth, i, n = 0, 0, len(tokens)
    while i < n:
        tok = tokens[i]
        tt = tok.token_type
        if tt is _T_LPAREN:
            depth += 1
        elif tt is _T_RPAREN:
            depth -= 1
        elif (
            depth == 0
            and tt is _T_DOT
            and i + 1 < n
            and tokens[i + 1].token_type is _T_STAR
            and out
            and id(out[-1].token_type) not in _STRINGISH_IDS
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
        if nxt.token_type is not _T_LPAREN or prev is None:
            continue
        call = prev
        quoted = call.token_type is _T_IDENT
        if not quoted and (id(call.token_type) in _NOT_WORD_IDS or not _IDENT.match(call.text)):
            continue
        if before is not None and (
            before.token_type is _T_DOT or _word(before) in _NOT_A_CALL_AFTER
        ):
            continue  # a table/CTE/index name; qualified calls are caught on the tree
        verdict = functions.check_token_call(call.text, quoted, nxt.start == call.end + 1)
        if verdict is not None:
            raise _Denied(*verdict)


def _check_into(tokens: list[Token], allowed_at: int = -1) -> None:
    for i, tok in enumerate(tokens):
        if tok.token_type is _T_INTO and i != allowed_at:
            raise _Denied(
                DenyCode.SELECT_INTO,
                "SELECT ... INTO (variables, OUTFILE, DUMPFILE) is not allowed",
            )


# ---------------------------------------------------------------------------------------------
# Dispatch


def _statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    first = tokens[0]
    if first.token_type is _T_LPAREN:
        keyword = "("
    else:
        keyword = _word(first) or ""
    handler = _HANDLERS.get(keyword)
    if handler is None:
        raise _Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            f"{keyword or 'this'} statements are not supported",
            keyword or "UNKNOWN",
        )
    try:
        return handler(sql, tokens, current_db)
    except _Denied as d:
        if not d.statement_class:
            d.statement_class = _CLASS_OF_KEYWORD.get(keyword, keyword)
        raise
    except (ParseError, TokenError) as e:
        raise _Denied(
            DenyCode.PARSE_ERROR, _parse_error_detail(e), _CLASS_OF_KEYWORD.get(keyword, keyword)
        ) from None


def _parse_one(sql: str, tokens: list[Token]) -> exp.Expr:
    trees = [t for t in _DIALECT.parser().parse(tokens, sql) if t is not None]
    if len(trees) != 1:
        raise _Denied(DenyCode.PARSE_ERROR, "the statement could not be parsed")
    return trees[0]


def _prepare(tokens: list[Token], upper_sql: str) -> list[Token]:
    if any(word in upper_sql for word in _MODIFIER_WORDS):
        tokens = _strip_modifiers(tokens)
    into_at = -1
    if tokens[0].token_type is TokenType.DELETE:
        tokens = _strip_delete_star(tokens)
    elif tokens[0].token_type is TokenType.INSERT:
        into_at = 2 if len(tokens) > 1 and tokens[1].token_type is _T_HINT else 1
    if "INTO" in upper_sql:
        _check_into(tokens, into_at)
    if "WITH" in upper_sql:
        _check_with_clauses(tokens)
    _check_token_calls(tokens)
    return tokens


def _parsed_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """SELECT / WITH / ( / TABLE / VALUES / INSERT / UPDATE / DELETE: parse and analyze."""
    keyword = "(" if tokens[0].token_type is _T_LPAREN else _word(tokens[0])
    if keyword == "WITH":
        main = _main_keyword_after_with(tokens)
        if main == "WITH":
            raise _Denied(DenyCode.PARSE_ERROR, "one WITH clause per query block")
        if main not in ("SELECT", "TABLE", "VALUES", "(", "UPDATE", "DELETE"):
            raise _Denied(
                DenyCode.UNSUPPORTED_STATEMENT, f"WITH ... {main or '?'} is not supported"
            )
    tokens = _prepare(tokens, sql.upper())
    tree = _parse_one(sql, tokens)
    expected = _EXPECTED_TREE[keyword]
    if not isinstance(tree, expected):
        raise _Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            f"{keyword} statement of an unsupported form ({type(tree).__name__})",
        )
    return _analyze_dml_tree(tree, current_db)


def _main_keyword_after_with(tokens: list[Token], start: int = 0) -> str | None:
    """The statement the WITH at `tokens[start]` introduces: the first statement keyword outside
    parentheses (CTE bodies and column lists are parenthesized; a `(` right after a body opens
    the query). None if the enclosing parenthesis closes first."""
    depth = 0
    prev = tokens[start]
    for tok in tokens[start + 1 :]:
        tt = tok.token_type
        if tt is _T_LPAREN:
            if depth == 0 and prev.token_type is _T_RPAREN:
                return "("
            depth += 1
        elif tt is _T_RPAREN:
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            w = _word(tok)
            if w in _STATEMENT_AFTER_WITH:
                return w
        prev = tok
    return None


_STATEMENT_AFTER_WITH = frozenset(
    {"SELECT", "TABLE", "VALUES", "UPDATE", "DELETE", "INSERT", "REPLACE", "WITH"}
)


def _check_with_clauses(tokens: list[Token]) -> None:
    """sqlglot merges `WITH a AS (...) WITH b AS (...) q` into one WITH clause; MySQL rejects it."""
    for i, tok in enumerate(tokens):
        if tok.token_type is _T_WITH and _main_keyword_after_with(tokens, i) == "WITH":
            raise _Denied(DenyCode.PARSE_ERROR, "one WITH clause per query block")


def _analyze_dml_tree(tree: exp.Expr, current_db: str | None) -> Analysis:
    try:
        return _analyze_dml_tree_unlabelled(tree, current_db)
    except _Denied as d:
        if not d.statement_class:
            d.statement_class = _CLASS_OF_TREE.get(type(tree), "")
        raise


def _analyze_dml_tree_unlabelled(tree: exp.Expr, current_db: str | None) -> Analysis:
    if isinstance(tree, exp.Insert):
        return _insert(tree, current_db)
    if isinstance(tree, exp.Update):
        return _update(tree, current_db)
    if isinstance(tree, exp.Delete):
        return _delete(tree, current_db)
    if isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)):
        return _query(tree, current_db)
    raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"unsupported statement ({type(tree).__name__})")


def _result(
    kind: StatementKind,
    statement_class: str,
    requirements: Iterable[Requirement] = (),
    **extra: object,
) -> Analysis:
    return Analysis(
        kind=kind, statement_class=statement_class, requirements=frozenset(requirements), **extra
    )


def _reads(c: _Collector) -> set[Requirement]:
    return {Requirement(ref, Privilege.SELECT) for ref in c.reads}


# ---------------------------------------------------------------------------------------------
# The tree walk


class _Collector:
    """One walk over a statement tree: table resolution, function checks, reads."""

    __slots__ = ("current_db", "reads", "roles", "accounted", "columns")

    def __init__(self, current_db: str | None) -> None:
        self.current_db = current_db
        self.reads: set[TableRef] = set()
        self.roles: dict[int, int] = {}  # id(exp.Table) -> _WRITE / _ALIAS, set by handlers
        self.accounted: set[int] = set()
        self.columns = 0  # exp.Column nodes seen (does the statement read column values?)

    def resolve(self, node: exp.Table, env: frozenset[str]) -> TableRef | None:
        """The real table `node` names; None for a CTE reference or DUAL."""
        this = node.this
        if not isinstance(this, exp.Identifier):
            raise _Denied(DenyCode.UNACCOUNTED_TABLE, "a table reference of an unsupported form")
        if node.args.get("catalog") is not None:
            raise _Denied(DenyCode.SUSPICIOUS_NAME, "three-part table names are not supported")
        name = this.this
        if not isinstance(name, str):
            raise _Denied(DenyCode.UNACCOUNTED_TABLE, "a table reference of an unsupported form")
        db = node.args.get("db")
        if db is None:
            if not this.args.get("quoted"):
                upper = name.upper()
                if upper == "DUAL":
                    return None
                if upper in functions.MYSQL_RESERVED or upper in _MODIFIER_WORDS:
                    raise _Denied(
                        DenyCode.SUSPICIOUS_NAME,
                        f"a table named like the keyword {upper} must be backquoted",
                    )
            if name in env:
                return None
            if self.current_db is None:
                raise _Denied(
                    DenyCode.NO_DATABASE,
                    f"no database selected for table {name}; use db.table or USE db",
                )
            return _table_ref(self.current_db, name)
        if not isinstance(db, exp.Identifier) or not isinstance(db.this, str):
            raise _Denied(DenyCode.UNACCOUNTED_TABLE, "a table reference of an unsupported form")
        return _table_ref(db.this, name)

    def walk(self, root: exp.Expr, env: frozenset[str] = frozenset()) -> None:
        stack: list[tuple[exp.Expr, frozenset[str]]] = [(root, env)]
        push = stack.append
        pop = stack.pop
        expr_type = exp.Expr
        while stack:
            node, env = pop()
            kind = type(node)
            if kind in _LEAVES:
                continue
            if kind is exp.Table:
                self._table(node, env, push)
                continue
            if kind is exp.Column:
                self.columns += 1  # only identifiers below
                continue
            if kind is exp.Hint:
                # Optimizer hints are read by MySQL's hint parser, never run as SQL; sqlglot
                # sometimes parses `INDEX(t idx)` inside them into tables or calls.
                for inner in node.find_all(exp.Table):
                    self.accounted.add(id(inner))
                continue
            if isinstance(node, exp.Func):
                self._function(node)
            elif kind is exp.Dot:
                if isinstance(node.this, exp.Func) or isinstance(node.expression, exp.Func):
                    raise _Denied(
                        DenyCode.UNKNOWN_FUNCTION,
                        "qualified function calls (db.fn()) run stored functions",
                    )
            elif kind is exp.Into:
                raise _Denied(DenyCode.SELECT_INTO, "SELECT ... INTO is not allowed")
            elif kind is exp.Command:
                raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "unsupported statement")
            args = node.args
            with_ = args.get("with_")
            if with_ is not None:
                env = self._with(with_, env, push)
            if kind is exp.Select and args.get("locks"):
                self._locks(node)
            for key, value in args.items():
                if value is None or value is with_:
                    continue
                if type(value) is list:
                    for item in value:
                        if isinstance(item, expr_type):
                            push((item, env))
                elif isinstance(value, expr_type):
                    push((value, env))

    def _table(
        self,
        node: exp.Table,
        env: frozenset[str],
        push: Callable[[tuple[exp.Expr, frozenset[str]]], None],
    ) -> None:
        self.accounted.add(id(node))
        role = self.roles.get(id(node), _READ)
        this = node.this
        if isinstance(this, exp.Func):
            if not isinstance(this, exp.JSONTable):
                raise _Denied(DenyCode.UNKNOWN_FUNCTION, "table functions other than JSON_TABLE")
            if role != _READ or node.args.get("db") is not None:
                raise _Denied(DenyCode.UNACCOUNTED_TABLE, "JSON_TABLE in an unsupported place")
        elif role == _READ:
            ref = self.resolve(node, env)
            if ref is not None:
                self.reads.add(ref)
        for key, value in node.args.items():
            if value is None or key in ("db", "catalog"):
                continue
            if key == "this" and not isinstance(this, exp.Func):
                continue
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, exp.Expr):
                        push((item, env))
            elif isinstance(value, exp.Expr):
                push((value, env))

    def _function(self, node: exp.Func) -> None:
        if isinstance(node, _ANONYMOUS):
            name = node.this
            if isinstance(name, exp.Identifier):
                if name.args.get("quoted"):
                    raise _Denied(
                        DenyCode.UNKNOWN_FUNCTION,
                        f"a backquoted function name ({name.this}) calls a stored function",
                    )
                name = name.this
            if not isinstance(name, str):
                raise _Denied(DenyCode.UNKNOWN_FUNCTION, "a function call of an unsupported form")
            verdict = functions.check_call_name(name)
            if verdict is not None:
                raise _Denied(*verdict)
        elif isinstance(node, _TREE_CHECKED_FUNCS):
            raise _Denied(
                DenyCode.UNKNOWN_FUNCTION,
                f"function {type(node).__name__.upper()} is not a MySQL built-in",
            )
        elif isinstance(node, _DENIED_FUNC_CLASSES):
            raise _Denied(DenyCode.DENIED_FUNCTION, "sequence functions are not allowed")

    def _with(
        self,
        with_: exp.Expr,
        env: frozenset[str],
        push: Callable[[tuple[exp.Expr, frozenset[str]]], None],
    ) -> frozenset[str]:
        if not isinstance(with_, exp.With):
            raise _Denied(DenyCode.UNACCOUNTED_TABLE, "a WITH clause of an unsupported form")
        recursive = bool(with_.args.get("recursive"))
        visible = env
        for cte in with_.expressions:
            name = _cte_name(cte)
            push((cte.this, visible | {name} if recursive else visible))
            visible = visible | {name}
        return visible

    def _locks(self, select: exp.Select) -> None:
        """`FOR UPDATE OF a`: `a` names a table or alias of this query block, not a table."""
        names = set()
        from_ = select.args.get("from_")
        sources = [from_.this] if from_ is not None else []
        sources += [j.this for j in select.args.get("joins") or []]
        for src in sources:
            if isinstance(src, exp.Expr):
                names.add(src.alias_or_name)
        for lock in select.args.get("locks") or []:
            for t in lock.expressions:
                if (
                    isinstance(t, exp.Table)
                    and t.args.get("db") is None
                    and t.name in names
                ):
                    self.roles[id(t)] = _ALIAS


def _cte_name(cte: exp.Expr) -> str:
    alias = cte.args.get("alias") if isinstance(cte, exp.CTE) else None
    ident = alias.this if isinstance(alias, exp.TableAlias) else None
    if not isinstance(ident, exp.Identifier) or not isinstance(ident.this, str) or not ident.this:
        raise _Denied(DenyCode.UNACCOUNTED_TABLE, "a CTE of an unsupported form")
    return ident.this


def _cte_names(with_: exp.Expr | None) -> frozenset[str]:
    if with_ is None:
        return frozenset()
    if not isinstance(with_, exp.With):
        raise _Denied(DenyCode.UNACCOUNTED_TABLE, "a WITH clause of an unsupported form")
    return frozenset(_cte_name(cte) for cte in with_.expressions)


def _table_ref(db: str, table: str) -> TableRef:
    if not table or not db or table != table.rstrip() or db != db.rstrip():
        raise _Denied(DenyCode.SUSPICIOUS_NAME, "empty names or names ending in a space")
    return canonical_table(db, table)


def _cross_check(tree: exp.Expr, c: _Collector) -> None:
    for node in tree.find_all(exp.Table):
        if id(node) not in c.accounted:
            raise _Denied(
                DenyCode.UNACCOUNTED_TABLE, f"table {node.name or '?'} could not be accounted for"
            )


def _check_args(node: exp.Expr, allowed: frozenset[str], what: str) -> None:
    for key, value in node.args.items():
        if key not in allowed and value not in (None, False, [], ""):
            raise _Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"{what} with {key.rstrip('_').upper()} is not supported",
            )


# ---------------------------------------------------------------------------------------------
# Queries and DML


def _query(tree: exp.Expr, current_db: str | None) -> Analysis:
    c = _Collector(current_db)
    c.walk(tree)
    _cross_check(tree, c)
    return _result(StatementKind.QUERY, "SELECT", _reads(c))


_INSERT_ARGS = frozenset({"this", "expression", "conflict", "ignore", "hint"})


def _insert(tree: exp.Insert, current_db: str | None) -> Analysis:
    _check_args(tree, _INSERT_ARGS, "INSERT")
    target = tree.this
    if isinstance(target, exp.Schema):
        target = target.this
    if not isinstance(target, exp.Table) or isinstance(target.this, exp.Func):
        raise _Denied(DenyCode.UNACCOUNTED_TABLE, "INSERT target of an unsupported form")
    c = _Collector(current_db)
    ref = c.resolve(target, frozenset())
    if ref is None:
        raise _Denied(DenyCode.UNACCOUNTED_TABLE, "INSERT target is not a table")
    c.roles[id(target)] = _WRITE
    requirements = {Requirement(ref, Privilege.INSERT)}
    conflict = tree.args.get("conflict")
    if conflict is not None:
        if not isinstance(conflict, exp.OnConflict) or not conflict.args.get("duplicate"):
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "only ON DUPLICATE KEY UPDATE")
        requirements.add(Requirement(ref, Privilege.UPDATE))
    c.walk(tree)
    _cross_check(tree, c)
    return _result(StatementKind.QUERY, "INSERT", requirements | _reads(c))


class _Source:
    """A top-level table reference of an UPDATE or multi-table DELETE."""

    __slots__ = ("node", "ref", "name", "alias", "db")

    def __init__(self, node: exp.Expr, c: _Collector, env: frozenset[str]) -> None:
        self.node = node
        self.ref: TableRef | None = None
        self.name = self.alias = ""
        self.db: str | None = None
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            self.ref = c.resolve(node, env)
            self.name = node.name
            self.db = self.ref.db if self.ref is not None else None
        self.alias = node.alias if isinstance(node, exp.Expr) else ""

    def matches(self, db: str | None, name: str) -> bool:
        lname = name.lower()
        if db is None and self.alias and self.alias.lower() == lname:
            return True
        if self.name and self.name.lower() == lname:
            return db is None or self.db is None or self.db == db
        return False


def _sources(node: exp.Expr | None, c: _Collector, env: frozenset[str], out: list[_Source]) -> None:
    if node is None:
        return
    if isinstance(node, exp.Join):
        _sources(node.this, c, env, out)
        return
    if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Table):
        _sources(node.this, c, env, out)  # a parenthesized join: (t1 JOIN t2)
    else:
        out.append(_Source(node, c, env))
    for join in node.args.get("joins") or []:
        _sources(join, c, env, out)


def _qualifier(column: exp.Column, c: _Collector) -> tuple[str | None, str | None]:
    if column.args.get("catalog") is not None:
        raise _Denied(DenyCode.SUSPICIOUS_NAME, "four-part column names are not supported")
    table = column.args.get("table")
    db = column.args.get("db")
    return (
        canonical_db(db.name) if db is not None else None,
        table.name if table is not None else None,
    )


def _reads_values(tree: exp.Expr, c: _Collector, assigned_columns: int) -> bool:
    return (
        tree.args.get("where") is not None
        or tree.args.get("order") is not None
        or c.columns > assigned_columns
    )


_UPDATE_ARGS = frozenset({"this", "expressions", "where", "order", "limit", "with_", "hint"})


def _update(tree: exp.Update, current_db: str | None) -> Analysis:
    _check_args(tree, _UPDATE_ARGS, "UPDATE")
    c = _Collector(current_db)
    env = _cte_names(tree.args.get("with_"))
    sources: list[_Source] = []
    _sources(tree.this, c, env, sources)
    real = [s for s in sources if s.ref is not None]
    targets: dict[int, TableRef] = {}
    assignments = tree.expressions
    if not assignments:
        raise _Denied(DenyCode.PARSE_ERROR, "UPDATE without SET")
    for eq in assignments:
        if not isinstance(eq, exp.EQ) or not isinstance(eq.this, exp.Column):
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "UPDATE ... SET of an unsupported form")
        db, table = _qualifier(eq.this, c)
        if table is None:
            matched = real if len(sources) > 1 else sources
        else:
            matched = [s for s in sources if s.matches(db, table)]
        if not matched:
            raise _Denied(
                DenyCode.UNACCOUNTED_TABLE,
                f"SET {table}.{eq.this.name} names no table of the statement",
            )
        for s in matched:
            if s.ref is None:
                raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "only base tables can be updated")
            targets[id(s.node)] = s.ref
    for nid in targets:
        c.roles[nid] = _WRITE
    c.walk(tree)
    _cross_check(tree, c)
    reads_values = _reads_values(tree, c, len(assignments))
    requirements = set()
    for ref in targets.values():
        requirements.add(Requirement(ref, Privilege.UPDATE))
        if reads_values:
            requirements.add(Requirement(ref, Privilege.SELECT))
    return _result(StatementKind.QUERY, "UPDATE", requirements | _reads(c))


_DELETE_ARGS = frozenset({"this", "using", "where", "order", "limit", "tables", "with_", "hint"})


def _delete(tree: exp.Delete, current_db: str | None) -> Analysis:
    _check_args(tree, _DELETE_ARGS, "DELETE")
    c = _Collector(current_db)
    env = _cte_names(tree.args.get("with_"))
    named = tree.args.get("tables")
    using = tree.args.get("using")
    target_refs: list[TableRef] = []
    if not named and not using:
        target = tree.this
        if not isinstance(target, exp.Table) or target.args.get("joins"):
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "DELETE of an unsupported form")
        ref = c.resolve(target, env)
        if ref is None:
            raise _Denied(DenyCode.UNACCOUNTED_TABLE, "DELETE target is not a table")
        c.roles[id(target)] = _WRITE
        target_refs.append(ref)
    else:
        sources: list[_Source] = []
        names: list[exp.Expr] = []
        if using:
            for u in using:
                _sources(u, c, env, sources)
            names = _flatten_tables(tree.this)
        else:
            _sources(tree.this, c, env, sources)
            names = list(named)
        for name_node in names:
            if not isinstance(name_node, exp.Table) or not isinstance(
                name_node.this, exp.Identifier
            ):
                raise _Denied(DenyCode.UNACCOUNTED_TABLE, "DELETE target of an unsupported form")
            c.roles[id(name_node)] = _ALIAS
            db_node = name_node.args.get("db")
            db = canonical_db(db_node.name) if db_node is not None else None
            matched = [s for s in sources if s.matches(db, name_node.name)]
            if not matched:
                raise _Denied(
                    DenyCode.UNACCOUNTED_TABLE,
                    f"DELETE target {name_node.name} names no table of the statement",
                )
            for s in matched:
                if s.ref is None:
                    raise _Denied(
                        DenyCode.UNSUPPORTED_STATEMENT, "only base tables can be deleted from"
                    )
                c.roles[id(s.node)] = _WRITE
                target_refs.append(s.ref)
    c.walk(tree)
    _cross_check(tree, c)
    reads_values = _reads_values(tree, c, 0)
    requirements = set()
    for ref in target_refs:
        requirements.add(Requirement(ref, Privilege.DELETE))
        if reads_values:
            requirements.add(Requirement(ref, Privilege.SELECT))
    return _result(StatementKind.QUERY, "DELETE", requirements | _reads(c))


def _flatten_tables(node: exp.Expr | None) -> list[exp.Expr]:
    """`DELETE FROM a, b USING ...`: sqlglot puts the target list in `this` as a join chain."""
    if node is None:
        return []
    out: list[exp.Expr] = [node]
    for join in node.args.get("joins") or []:
        if not isinstance(join, exp.Join) or join.args.get("on") or join.args.get("using"):
            raise _Denied(
                DenyCode.UNSUPPORTED_STATEMENT, "DELETE target list of an unsupported form"
            )
        out += _flatten_tables(join.this)
    return out


# ---------------------------------------------------------------------------------------------
# DDL (tables only)


def _table_options(options: Iterable[exp.Expr], what: str, *, alter: bool = False) -> None:
    for p in options:
        if isinstance(p, exp.TemporaryProperty):
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "temporary tables are not supported")
        if isinstance(p, exp.EngineProperty):
            if p.name.lower() not in ALLOWED_ENGINES:
                raise _Denied(
                    DenyCode.UNSUPPORTED_STATEMENT, f"{what} with ENGINE={p.name} is not supported"
                )
        elif isinstance(p, _SIMPLE_TABLE_OPTIONS):
            continue
        elif isinstance(p, exp.LikeProperty) and not alter:
            continue
        elif alter and isinstance(p, (exp.AlgorithmProperty, exp.LockProperty, exp.Order)):
            continue
        elif type(p) is exp.Property and p.name.upper() in _ALLOWED_NAMED_PROPERTIES:
            continue
        else:
            raise _Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"{what} option {type(p).__name__} is not supported",
            )


def _ddl_target(node: exp.Expr | None, c: _Collector, what: str) -> TableRef:
    if isinstance(node, exp.Schema):
        node = node.this
    if not isinstance(node, exp.Table) or isinstance(node.this, exp.Func) or node.args.get("joins"):
        raise _Denied(DenyCode.UNACCOUNTED_TABLE, f"{what} target of an unsupported form")
    ref = c.resolve(node, frozenset())
    if ref is None:
        raise _Denied(DenyCode.UNACCOUNTED_TABLE, f"{what} target is not a table")
    c.roles[id(node)] = _WRITE
    return ref


def _leading_words(tokens: list[Token], count: int) -> str:
    words = [w for w in (_word(t) for t in tokens[:count]) if w]
    return " ".join(words)


_CREATE_ARGS = frozenset({"this", "kind", "expression", "exists", "properties"})


def _create_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    second = _word(tokens[1]) if len(tokens) > 1 else None
    if second != "TABLE":
        what = _leading_words(tokens, 3 if second in ("TEMPORARY", "OR") else 2)
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    tree = _parse_one(sql, _prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.Create) or str(tree.args.get("kind") or "").upper() != "TABLE":
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "CREATE TABLE of an unsupported form")
    _check_args(tree, _CREATE_ARGS, "CREATE TABLE")
    properties = tree.args.get("properties")
    if properties is not None:
        _table_options(properties.expressions, "CREATE TABLE")
    c = _Collector(current_db)
    ref = _ddl_target(tree.this, c, "CREATE TABLE")
    c.walk(tree)
    _cross_check(tree, c)
    return _result(
        StatementKind.QUERY, "CREATE TABLE", {Requirement(ref, Privilege.CREATE)} | _reads(c)
    )


def _alter_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    if _word(tokens[1] if len(tokens) > 1 else None) != "TABLE":
        what = _leading_words(tokens, 2)
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    tree = _parse_one(sql, _prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.Alter) or str(tree.args.get("kind") or "").upper() != "TABLE":
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "ALTER TABLE of an unsupported form")
    _check_args(tree, frozenset({"this", "kind", "actions", "options"}), "ALTER TABLE")
    c = _Collector(current_db)
    ref = _ddl_target(tree.this, c, "ALTER TABLE")
    for action in tree.args.get("actions") or []:
        if isinstance(action, exp.Drop):
            if str(action.args.get("kind") or "").upper() not in _ALTER_DROP_KINDS:
                raise _Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    f"ALTER TABLE ... DROP {action.args.get('kind')} is not supported",
                )
            _check_args(action, frozenset({"kind", "tables", "exists"}), "ALTER TABLE ... DROP")
            for name in action.args.get("tables") or []:
                if isinstance(name, exp.Table):
                    c.roles[id(name)] = _ALIAS  # an index or constraint name
        elif isinstance(action, exp.AlterRename):
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "renaming tables is not supported")
        elif not isinstance(action, _ALTER_ACTIONS):
            raise _Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"ALTER TABLE action {type(action).__name__} is not supported",
            )
    _table_options(tree.args.get("options") or [], "ALTER TABLE", alter=True)
    c.walk(tree)
    _cross_check(tree, c)
    requirements = {Requirement(ref, Privilege.ALTER)} | _reads(c)
    return _result(StatementKind.QUERY, "ALTER TABLE", requirements)


def _drop_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    second = _word(tokens[1]) if len(tokens) > 1 else None
    if second != "TABLE":
        what = _leading_words(tokens, 3 if second == "TEMPORARY" else 2)
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    tree = _parse_one(sql, _prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.Drop) or str(tree.args.get("kind") or "").upper() != "TABLE":
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "DROP TABLE of an unsupported form")
    _check_args(tree, frozenset({"kind", "tables", "exists", "cascade", "restrict"}), "DROP TABLE")
    c = _Collector(current_db)
    refs = [_ddl_target(t, c, "DROP TABLE") for t in tree.args.get("tables") or []]
    if not refs:
        raise _Denied(DenyCode.PARSE_ERROR, "DROP TABLE without a table")
    c.walk(tree)
    _cross_check(tree, c)
    requirements = {Requirement(r, Privilege.DROP) for r in refs}
    return _result(StatementKind.QUERY, "DROP TABLE", requirements)


def _truncate_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    tree = _parse_one(sql, _prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.TruncateTable):
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "TRUNCATE of an unsupported form")
    _check_args(tree, frozenset({"expressions"}), "TRUNCATE")
    c = _Collector(current_db)
    refs = [_ddl_target(t, c, "TRUNCATE") for t in tree.expressions]
    if not refs:
        raise _Denied(DenyCode.PARSE_ERROR, "TRUNCATE without a table")
    c.walk(tree)
    _cross_check(tree, c)
    # MySQL requires the DROP privilege for TRUNCATE TABLE.
    return _result(StatementKind.QUERY, "TRUNCATE", {Requirement(r, Privilege.DROP) for r in refs})


# ---------------------------------------------------------------------------------------------
# Statements with a small fixed grammar, read from the tokens


class _Cursor:
    __slots__ = ("tokens", "i")

    def __init__(self, tokens: list[Token], i: int = 0) -> None:
        self.tokens = tokens
        self.i = i

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def word(self) -> str | None:
        return _word(self.peek())

    def accept(self, *words: str) -> str | None:
        w = self.word()
        if w is not None and w in words:
            self.i += 1
            return w
        return None

    def expect(self, *words: str) -> str:
        w = self.accept(*words)
        if w is None:
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")
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
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")
        return tok

    def at_end(self) -> bool:
        return self.i >= len(self.tokens)

    def expect_end(self) -> None:
        if not self.at_end():
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")

    def ident(self) -> str:
        tok = self.peek()
        if tok is not None:
            if tok.token_type is _T_IDENT:
                self.i += 1
                return tok.text
            if id(tok.token_type) not in _NOT_WORD_IDS and _IDENT.match(tok.text):
                if tok.text.upper() in functions.MYSQL_RESERVED:
                    raise _Denied(
                        DenyCode.SUSPICIOUS_NAME,
                        f"a name spelled like the keyword {tok.text.upper()} must be backquoted",
                    )
                self.i += 1
                return tok.text
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "expected a name")

    def table_name(self) -> tuple[str | None, str]:
        first = self.ident()
        if self.accept_type(TokenType.DOT) is not None:
            return first, self.ident()
        return None, first


def _resolve_named(db: str | None, table: str, current_db: str | None) -> TableRef:
    if db is None:
        if current_db is None:
            raise _Denied(
                DenyCode.NO_DATABASE, f"no database selected for table {table}; use db.table"
            )
        db = current_db
    return _table_ref(db, table)


def _like_or_where(c: _Cursor, *, allow_like: bool = True) -> None:
    if c.at_end():
        return
    if allow_like and c.accept("LIKE"):
        c.expect_type(TokenType.STRING)
        c.expect_end()
        return
    if c.accept("WHERE"):
        rest = c.tokens[c.i :]
        for tok in rest:
            if tok.token_type is _T_LPAREN or tok.token_type is _T_RPAREN or _word(tok) in (
                "SELECT",
                "TABLE",
                "WITH",
                "VALUES",
                "EXISTS",
            ):
                raise _Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    "SHOW ... WHERE with parentheses, subqueries or calls is not supported",
                )
        if not rest:
            raise _Denied(DenyCode.PARSE_ERROR, "WHERE without a condition")
        c.i = len(c.tokens)
        return
    raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "statement of an unsupported form")


def _show_result(
    statement_class: str, requirements: Iterable[Requirement] = (), **extra: object
) -> Analysis:
    return _result(StatementKind.SHOW, statement_class, requirements, **extra)


def _show(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = _Cursor(tokens, 1)
    if c.accept("DATABASES", "SCHEMAS"):
        _like_or_where(c)
        return _show_result("SHOW DATABASES")
    if c.accept("SESSION", "LOCAL"):
        w = c.expect("VARIABLES", "STATUS")
        _like_or_where(c)
        return _show_result(f"SHOW {w}")
    w = c.accept("VARIABLES", "STATUS", "COLLATION", "CHARSET")
    if w:
        _like_or_where(c)
        return _show_result("SHOW CHARACTER SET" if w == "CHARSET" else f"SHOW {w}")
    if c.accept("CHARACTER"):
        c.expect("SET")
        _like_or_where(c)
        return _show_result("SHOW CHARACTER SET")
    w = c.accept("WARNINGS", "ERRORS")
    if w:
        if c.accept("LIMIT"):
            c.expect_type(TokenType.NUMBER)
            if c.accept_type(TokenType.COMMA):
                c.expect_type(TokenType.NUMBER)
        c.expect_end()
        return _show_result(f"SHOW {w}")
    if c.accept("COUNT"):
        c.expect_type(TokenType.L_PAREN)
        c.expect_type(TokenType.STAR)
        c.expect_type(TokenType.R_PAREN)
        w = c.expect("WARNINGS", "ERRORS")
        c.expect_end()
        return _show_result(f"SHOW COUNT(*) {w}")
    if c.accept("STORAGE"):
        c.expect("ENGINES")
        c.expect_end()
        return _show_result("SHOW ENGINES")
    if c.accept("ENGINES"):
        c.expect_end()
        return _show_result("SHOW ENGINES")
    if c.accept("CREATE"):
        if not c.accept("TABLE"):
            what = f"SHOW CREATE {c.word() or ''}".strip()
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
        db, table = c.table_name()
        c.expect_end()
        ref = _resolve_named(db, table, current_db)
        return _show_result("SHOW CREATE TABLE", {Requirement(ref, Privilege.SELECT)})
    c.accept("EXTENDED")
    full = c.accept("FULL") is not None
    if c.accept("TABLES"):
        db_name = c.ident() if c.accept("FROM", "IN") else None
        _like_or_where(c)
        if db_name is None:
            if current_db is None:
                raise _Denied(DenyCode.NO_DATABASE, "no database selected; use SHOW TABLES FROM db")
            db_name = current_db
        db_name = _table_ref(db_name, "-").db
        return _show_result("SHOW TABLES", database_access=frozenset({db_name}))
    w = c.accept("COLUMNS", "FIELDS") or (None if full else c.accept("INDEX", "INDEXES", "KEYS"))
    if w:
        statement_class = "SHOW COLUMNS" if w in ("COLUMNS", "FIELDS") else "SHOW INDEX"
        c.expect("FROM", "IN")
        db, table = c.table_name()
        if c.accept("FROM", "IN"):
            if db is not None:
                raise _Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    "give the database once: SHOW ... FROM db.table or FROM table FROM db",
                    statement_class,
                )
            db = c.ident()
        _like_or_where(c, allow_like=statement_class == "SHOW COLUMNS")
        ref = _resolve_named(db, table, current_db)
        return _show_result(statement_class, {Requirement(ref, Privilege.SELECT)})
    what = f"SHOW {c.word() or ''}".strip()
    raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)


def _explain(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    first = _word(tokens[0])
    c = _Cursor(tokens, 1)
    options = False
    while True:
        if c.accept("ANALYZE", "EXTENDED", "PARTITIONS"):
            options = True
        elif c.accept("FORMAT"):
            c.expect_type(TokenType.EQ)
            c.expect("TRADITIONAL", "JSON", "TREE")
            options = True
        else:
            break
    if c.accept("FOR"):
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "EXPLAIN FOR CONNECTION is not supported")
    tok = c.peek()
    if tok is not None and tok.token_type is _T_INTO:
        raise _Denied(DenyCode.SELECT_INTO, "EXPLAIN ... INTO is not allowed")
    w = c.word()
    statement = tok is not None and (
        tok.token_type is _T_LPAREN
        or w in ("SELECT", "WITH", "TABLE", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE")
    )
    if first == "ANALYZE" and (not statement or w == "TABLE"):
        raise _Denied(
            DenyCode.UNSUPPORTED_STATEMENT, "ANALYZE TABLE is not supported", "ANALYZE TABLE"
        )
    if statement:
        if w == "REPLACE":
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "REPLACE statements are not supported")
        inner = _parsed_statement(sql, tokens[c.i :], current_db)
        return _result(StatementKind.QUERY, "EXPLAIN", inner.requirements)
    if options:
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "EXPLAIN of an unsupported form")
    db, table = c.table_name()
    if not c.at_end():
        if c.accept_type(TokenType.STRING) is None:
            c.ident()
        c.expect_end()
    ref = _resolve_named(db, table, current_db)
    return _show_result("DESCRIBE", {Requirement(ref, Privilege.SELECT)})


def _use(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = _Cursor(tokens, 1)
    db = c.ident()
    c.expect_end()
    db = _table_ref(db, "-").db
    return _result(StatementKind.USE, "USE", use_db=db, database_access=frozenset({db}))


def _kill(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = _Cursor(tokens, 1)
    scope = c.accept("CONNECTION", "QUERY")
    tok = c.accept_type(TokenType.NUMBER)
    if tok is None or not _DIGITS.match(tok.text):
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "KILL takes a numeric connection id")
    c.expect_end()
    return _result(
        StatementKind.KILL,
        "KILL",
        kill_target=int(tok.text),
        kill_query_only=scope == "QUERY",
    )


def _begin(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = _Cursor(tokens, 1)
    c.accept("WORK")
    c.expect_end()
    return _result(StatementKind.TRANSACTION, "BEGIN")


def _start(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = _Cursor(tokens, 1)
    if not c.accept("TRANSACTION"):
        what = _leading_words(tokens, 2)
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
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
            raise _Denied(DenyCode.PARSE_ERROR, "trailing comma")
    c.expect_end()
    return _result(StatementKind.TRANSACTION, "START TRANSACTION")


def _end_transaction(statement_class: str) -> Callable[[str, list[Token], str | None], Analysis]:
    def handler(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
        c = _Cursor(tokens, 1)
        c.accept("WORK")
        if statement_class == "ROLLBACK" and c.word() == "TO":
            raise _Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                "ROLLBACK TO SAVEPOINT is not supported",
                "ROLLBACK TO SAVEPOINT",
            )
        if c.accept("AND"):
            c.accept("NO")
            c.expect("CHAIN")
        if c.accept("NO"):
            c.expect("RELEASE")
        elif c.accept("RELEASE"):
            raise _Denied(
                DenyCode.UNSUPPORTED_STATEMENT, f"{statement_class} ... RELEASE is not supported"
            )
        c.expect_end()
        return _result(StatementKind.TRANSACTION, statement_class)

    return handler


# ---------------------------------------------------------------------------------------------
# SET


def _set_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    w = _word(tokens[1]) if len(tokens) > 1 else None
    if w in ("GLOBAL", "PERSIST", "PERSIST_ONLY"):
        raise _Denied(
            DenyCode.SYSTEM_VARIABLE, f"SET {w} changes the server for every session", "SET"
        )
    if w in ("PASSWORD", "ROLE", "STATEMENT", "RESOURCE") or (
        w == "DEFAULT" and len(tokens) > 2 and _word(tokens[2]) == "ROLE"
    ):
        what = _leading_words(tokens, 3 if w in ("DEFAULT", "RESOURCE") else 2)
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    if w == "TRANSACTION":
        return _set_transaction(tokens, 2)
    if w in ("SESSION", "LOCAL") and len(tokens) > 2 and _word(tokens[2]) == "TRANSACTION":
        return _set_transaction(tokens, 3)
    tree = _parse_one(sql, _prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.Set):
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "SET of an unsupported form")
    _check_args(tree, frozenset({"expressions"}), "SET")
    if not tree.expressions:
        raise _Denied(DenyCode.PARSE_ERROR, "SET without an assignment")
    for item in tree.expressions:
        _check_set_item(item)
    c = _Collector(current_db)
    c.walk(tree)
    _cross_check(tree, c)
    return _result(StatementKind.SET, "SET", _reads(c))


def _set_transaction(tokens: list[Token], i: int) -> Analysis:
    c = _Cursor(tokens, i)
    while True:
        if c.accept("ISOLATION"):
            c.expect("LEVEL")
            if c.accept("READ"):
                c.expect("UNCOMMITTED", "COMMITTED")
            elif c.accept("REPEATABLE"):
                c.expect("READ")
            else:
                c.expect("SERIALIZABLE")
        else:
            c.expect("READ")
            c.expect("ONLY", "WRITE")
        if c.accept_type(TokenType.COMMA) is None:
            break
    c.expect_end()
    return _result(StatementKind.SET, "SET TRANSACTION")


def _simple_name(value: exp.Expr | None) -> str | None:
    """`utf8mb4`, `'utf8mb4'`, `` `utf8mb4` `` -> the name; anything computed -> None."""
    if isinstance(value, exp.Literal):
        return value.this if value.is_string else None
    if isinstance(value, exp.Column):
        if value.args.get("table") is not None:
            return None
        return value.name
    if isinstance(value, (exp.Var, exp.Identifier)):
        return value.name
    return None


def _check_charset(value: exp.Expr | None, *, allow_null: bool = False) -> None:
    if isinstance(value, exp.Null) and allow_null:
        return
    name = _simple_name(value)
    if name is None:
        raise _Denied(DenyCode.CHARSET, "the character set must be given by name")
    if name.upper() == "DEFAULT" and not isinstance(value, exp.Literal):
        return
    if name.lower() not in ALLOWED_CHARSETS:
        raise _Denied(
            DenyCode.CHARSET,
            f"character set {name} is not allowed (one of {', '.join(sorted(ALLOWED_CHARSETS))})",
        )


def _check_collation(value: exp.Expr | None) -> None:
    name = _simple_name(value)
    if name is None:
        raise _Denied(DenyCode.CHARSET, "the collation must be given by name")
    lower = name.lower()
    if lower == "default" and not isinstance(value, exp.Literal):
        return
    if lower == "binary" or any(
        lower.startswith(cs + "_") for cs in ALLOWED_CHARSETS if cs != "binary"
    ):
        return
    raise _Denied(DenyCode.CHARSET, f"collation {name} is not allowed")


def _check_set_item(item: exp.Expr) -> None:
    if not isinstance(item, exp.SetItem):
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "SET of an unsupported form")
    if item.args.get("global_"):
        raise _Denied(DenyCode.SYSTEM_VARIABLE, "SET GLOBAL changes the server for every session")
    kind = str(item.args.get("kind") or "").upper()
    if kind == "NAMES":
        _check_args(item, frozenset({"this", "kind", "collate"}), "SET NAMES")
        _check_charset(item.this)
        if item.args.get("collate") is not None:
            _check_collation(item.args.get("collate"))
        return
    if kind == "CHARACTER SET":
        _check_args(item, frozenset({"this", "kind"}), "SET CHARACTER SET")
        _check_charset(item.this)
        return
    if kind not in _SESSION_KINDS:
        if kind in ("GLOBAL", "PERSIST", "PERSIST_ONLY"):
            raise _Denied(
                DenyCode.SYSTEM_VARIABLE, f"SET {kind} changes the server for every session"
            )
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"SET {kind} is not supported")
    _check_args(item, frozenset({"this", "kind"}), "SET")
    assignment = item.this
    if not isinstance(assignment, (exp.EQ, exp.PropertyEQ)):
        raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, "SET of an unsupported form")
    target, value = assignment.this, assignment.expression
    if isinstance(target, exp.Parameter):  # a user variable: @v = expr
        if kind:
            raise _Denied(DenyCode.UNSUPPORTED_STATEMENT, f"SET {kind} @variable is not valid")
        return
    name, scope = _system_variable(target)
    if scope not in _SESSION_KINDS:
        raise _Denied(
            DenyCode.SYSTEM_VARIABLE,
            f"SET @@{scope.lower()}.{name} changes the server for every session",
        )
    lower = name.lower()
    if lower in SESSION_VARIABLES:
        return
    if lower in _CHARSET_VARIABLES:
        _check_charset(value, allow_null=lower == "character_set_results")
        return
    if lower in _COLLATION_VARIABLES:
        _check_collation(value)
        return
    if lower == "sql_mode":
        _check_sql_mode(value)
        return
    raise _Denied(DenyCode.SYSTEM_VARIABLE, f"setting the system variable {name} is not allowed")


# Modes that change only what the server accepts or stores, never how it reads SQL text.
# Absent on purpose: ANSI_QUOTES and NO_BACKSLASH_ESCAPES (they change how quotes and strings
# lex: a parser differential), the combination modes that include them or switch MariaDB's
# parser (ANSI, ORACLE, MSSQL, DB2, POSTGRESQL, MAXDB...), IGNORE_SPACE, PIPES_AS_CONCAT,
# HIGH_NOT_PRECEDENCE and EMPTY_STRING_IS_NULL (they change how expressions parse).
SAFE_SQL_MODES = frozenset({
    "ALLOW_INVALID_DATES", "ERROR_FOR_DIVISION_BY_ZERO", "NO_AUTO_CREATE_USER",
    "NO_AUTO_VALUE_ON_ZERO", "NO_DIR_IN_CREATE", "NO_ENGINE_SUBSTITUTION", "NO_FIELD_OPTIONS",
    "NO_KEY_OPTIONS", "NO_TABLE_OPTIONS", "NO_UNSIGNED_SUBTRACTION", "NO_ZERO_DATE",
    "NO_ZERO_IN_DATE", "ONLY_FULL_GROUP_BY", "PAD_CHAR_TO_FULL_LENGTH", "REAL_AS_FLOAT",
    "STRICT_ALL_TABLES", "STRICT_TRANS_TABLES", "TIME_ROUND_FRACTIONAL", "TRADITIONAL",
})


def _check_sql_mode(value: exp.Expr | None) -> None:
    """`sql_mode` may be set to safe modes only: a string literal, or CONCAT(@@sql_mode, literals)
    (drivers such as MariaDB Connector/J append STRICT_TRANS_TABLES at connect). The session's
    current value is safe because the proxy pins it so, and clients only ever add safe modes.
    DEFAULT is refused: the global value may hold ANSI_QUOTES."""
    literals: list[exp.Expr] = []
    if isinstance(value, exp.Concat):
        first, *rest = value.expressions or [None]
        if not (isinstance(first, exp.SessionParameter) and str(first.name).lower() == "sql_mode"
                and str(first.args.get("kind") or "SESSION").upper() == "SESSION"):
            raise _Denied(DenyCode.SYSTEM_VARIABLE, "sql_mode may only be extended from @@sql_mode")
        literals = rest
    else:
        literals = [value] if value is not None else []
    if not literals:
        raise _Denied(DenyCode.SYSTEM_VARIABLE, "sql_mode must be set to a list of modes")
    for lit in literals:
        if not (isinstance(lit, exp.Literal) and lit.is_string):
            raise _Denied(DenyCode.SYSTEM_VARIABLE, "sql_mode must be given as string literals")
        for mode in str(lit.this).split(","):
            mode = mode.strip().upper()
            if mode and mode not in SAFE_SQL_MODES:
                raise _Denied(
                    DenyCode.SYSTEM_VARIABLE,
                    f"sql_mode {mode} is not allowed: it changes how the server reads SQL",
                )


def _system_variable(target: exp.Expr) -> tuple[str, str]:
    if isinstance(target, exp.SessionParameter):
        name = target.this
        scope = str(target.args.get("kind") or "").upper()
        if isinstance(name, (exp.Identifier, exp.Var)) and isinstance(name.name, str) and name.name:
            return name.name, scope
    elif isinstance(target, exp.Column):
        if target.args.get("table") is None and target.name:
            return target.name, ""
        raise _Denied(DenyCode.SYSTEM_VARIABLE, "structured system variables are not allowed")
    elif isinstance(target, (exp.Identifier, exp.Var)) and target.name:
        return target.name, ""
    raise _Denied(DenyCode.SYSTEM_VARIABLE, "SET of an unsupported variable form")


# ---------------------------------------------------------------------------------------------
# Dispatch tables

_EXPECTED_TREE: dict[str | None, tuple[type, ...]] = {
    "SELECT": (exp.Select, exp.SetOperation),
    "TABLE": (exp.Select, exp.SetOperation),
    "VALUES": (exp.Values, exp.SetOperation),
    "(": (exp.Select, exp.SetOperation, exp.Subquery),
    "WITH": (exp.Select, exp.SetOperation, exp.Update, exp.Delete),
    "INSERT": (exp.Insert,),
    "UPDATE": (exp.Update,),
    "DELETE": (exp.Delete,),
}

_Handler = Callable[[str, list[Token], "str | None"], Analysis]

_HANDLERS: dict[str, _Handler] = {
    **{k: _parsed_statement for k in _EXPECTED_TREE if k is not None},
    "CREATE": _create_statement,
    "ALTER": _alter_statement,
    "DROP": _drop_statement,
    "TRUNCATE": _truncate_statement,
    "SET": _set_statement,
    "SHOW": _show,
    "USE": _use,
    "KILL": _kill,
    "BEGIN": _begin,
    "START": _start,
    "COMMIT": _end_transaction("COMMIT"),
    "ROLLBACK": _end_transaction("ROLLBACK"),
    "EXPLAIN": _explain,
    "DESCRIBE": _explain,
    "DESC": _explain,
    "ANALYZE": _explain,
}

_CLASS_OF_TREE = {exp.Insert: "INSERT", exp.Update: "UPDATE", exp.Delete: "DELETE"}

_CLASS_OF_KEYWORD = {
    "(": "SELECT",
    "WITH": "SELECT",
    "TABLE": "SELECT",
    "VALUES": "SELECT",
    "CREATE": "CREATE TABLE",
    "ALTER": "ALTER TABLE",
    "DROP": "DROP TABLE",
    "START": "START TRANSACTION",
    "DESCRIBE": "EXPLAIN",
    "DESC": "EXPLAIN",
}

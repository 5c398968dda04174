"""SET: user variables (`@v = expr`, reads checked like a SELECT), an allow-list of session
variables, character sets and collations that lex like UTF-8 or a single-byte charset, safe
`sql_mode` values, SET TRANSACTION, and MariaDB's SET STATEMENT var = value [, ...] FOR stmt
(the same rules for the variables, the statement authorized as itself). Never GLOBAL / PERSIST.
docs/refusals.md lists every variable and why it is allowed or refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sqlglot import exp
from sqlglot.errors import ParseError
from sqlglot.tokens import Token, TokenType

from proxy.authz import columns
from proxy.authz.model import Analysis, DenyCode, StatementKind
from proxy.authz.outcome import Denied, result
from proxy.authz.parse import parse_one, prepare
from proxy.authz.lexer import Cursor, leading_words, word
from proxy.authz.walk import Collector, check_args, collected, cross_check

# SET: session variables a client may change (names compare case-insensitively, as in MySQL).
# Each changes this session only, and only what the person could do anyway: e.g.
# foreign_key_checks = 0 / unique_checks = 0 let them write orphan or duplicate rows, but only in
# tables they may write (MariaDB's own model: no privilege is needed to set them).
SESSION_VARIABLES = frozenset(
    """
    autocommit time_zone transaction_isolation tx_isolation transaction_read_only tx_read_only
    sql_select_limit max_execution_time max_statement_time net_read_timeout net_write_timeout
    wait_timeout interactive_timeout group_concat_max_len sql_safe_updates sql_auto_is_null
    profiling div_precision_increment lc_time_names sql_quote_show_create
    innodb_lock_wait_timeout lock_wait_timeout
    foreign_key_checks unique_checks sql_notes note_verbosity innodb_snapshot_isolation
    """.split()
)
_CHARSET_VARIABLES = frozenset(
    {
        "character_set_client", "character_set_connection", "character_set_results",
        "character_set_server", "character_set_database",
    }
)
_COLLATION_VARIABLES = frozenset({"collation_connection", "collation_server", "collation_database"})
# Words of a SET that may change the connection's character set (a user variable named so too:
# reading the server's character set again is harmless).
_CHARSET_WORDS = frozenset({"NAMES", "CHARACTER", "CHARSET", "CHARACTER_SET_CLIENT"})
# Single-byte or UTF-8 charsets only: in gbk, big5, sjis, cp932, gb18030 ... a multibyte
# character can end in 0x5C (backslash), so the server and this parser would split strings
# differently.
ALLOWED_CHARSETS = frozenset({"utf8mb4", "utf8mb3", "utf8", "latin1", "ascii", "binary"})
_SESSION_KINDS = frozenset({"", "SESSION", "LOCAL"})


Dispatch = Callable[[str, list[Token], "str | None"], Analysis]


def set_statement(
    sql: str, tokens: list[Token], current_db: str | None, *, dispatch: Dispatch | None = None
) -> Analysis:
    """`dispatch` analyzes the statement of a SET STATEMENT ... FOR (analyze.py's dispatcher);
    without it SET STATEMENT is refused."""
    w = word(tokens[1]) if len(tokens) > 1 else None
    if w in ("GLOBAL", "PERSIST", "PERSIST_ONLY"):
        raise Denied(
            DenyCode.SYSTEM_VARIABLE, f"SET {w} changes the server for every session", "SET"
        )
    if w == "STATEMENT" and dispatch is not None:
        return _set_statement_for(sql, tokens, current_db, dispatch)
    if w in ("PASSWORD", "ROLE", "STATEMENT", "RESOURCE") or (
        w == "DEFAULT" and len(tokens) > 2 and word(tokens[2]) == "ROLE"
    ):
        what = leading_words(tokens, 3 if w in ("DEFAULT", "RESOURCE") else 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    if w == "TRANSACTION":
        return _set_transaction(tokens, 2)
    if w in ("SESSION", "LOCAL") and len(tokens) > 2 and word(tokens[2]) == "TRANSACTION":
        return _set_transaction(tokens, 3)
    try:
        tree = parse_one(sql, prepare(tokens, sql.upper()))
    except (Denied, ParseError) as e:
        parse_failed = isinstance(e, ParseError) or e.code is DenyCode.PARSE_ERROR
        if parse_failed and _assigns_sql_mode(tokens):
            # e.g. REPLACE(@@sql_mode, ...): not a value the sql_mode rule could accept anyway
            raise Denied(
                DenyCode.SYSTEM_VARIABLE,
                "sql_mode may only be set to string literals or CONCAT(@@sql_mode, literals)",
            ) from None
        raise
    if not isinstance(tree, exp.Set):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "SET of an unsupported form")
    check_args(tree, frozenset({"expressions"}), "SET")
    if not tree.expressions:
        raise Denied(DenyCode.PARSE_ERROR, "SET without an assignment")
    for item in tree.expressions:
        _check_set_item(item)
    c = Collector(current_db)
    c.walk(tree)
    cross_check(tree, c)
    charset = any(word(t) in _CHARSET_WORDS for t in tokens[1:])
    return collected(StatementKind.SET, "SET", c, column_uses=columns.of_set(tree, c.resolved), changes_charset=charset)


# What SET STATEMENT ... FOR may run: statements that return rows or write them, nothing that
# changes the session itself (SET, USE, PREPARE ...).
_SET_STATEMENT_CLASSES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE"})
_CONSTANT_TYPES = frozenset({TokenType.NUMBER, TokenType.STRING})
_SET_STATEMENT_FORM = "SET STATEMENT var = value [, ...] FOR statement"


def _set_statement_for(
    sql: str, tokens: list[Token], current_db: str | None, dispatch: Dispatch
) -> Analysis:
    """SET STATEMENT var = constant [, var = constant] ... FOR statement: the variables are
    checked as a SET of them would be (session variables of the allow-list; no user variables,
    no character set: the session would not see the connection's character set change), then
    the statement is authorized as itself. Values are constants (a number, a string, a word
    such as ON or DEFAULT), so the FOR that ends the list is the first FOR at top level."""
    what = "SET STATEMENT"
    i, n = 2, len(tokens)
    assignments: list[Token] = [tokens[0]]
    while True:
        name = tokens[i] if i < n else None
        if name is None or word(name) is None or i + 2 >= n:
            raise Denied(DenyCode.PARSE_ERROR, _SET_STATEMENT_FORM, what)
        if name.text.lower() in _CHARSET_VARIABLES | _COLLATION_VARIABLES:
            raise Denied(
                DenyCode.CHARSET,
                f"SET STATEMENT {name.text} is not supported: set the character set for the "
                "session",
                what,
            )
        if tokens[i + 1].token_type is not TokenType.EQ:
            raise Denied(DenyCode.PARSE_ERROR, _SET_STATEMENT_FORM, what)
        k = i + 2
        if tokens[k].token_type in (TokenType.DASH, TokenType.PLUS) and k + 1 < n:
            k += 1
        value = tokens[k]
        if value.token_type not in _CONSTANT_TYPES and word(value) is None:
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT, "SET STATEMENT values must be constants", what
            )
        assignments.extend(tokens[i : k + 1])
        i = k + 1
        if i < n and tokens[i].token_type is TokenType.COMMA:
            assignments.append(tokens[i])
            i += 1
            continue
        break
    if i >= n or tokens[i].token_type is not TokenType.FOR or i + 1 >= n:
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            "SET STATEMENT values must be constants, followed by FOR statement",
            what,
        )
    try:
        variables = set_statement(sql, assignments, current_db)
    except Denied as d:
        d.statement_class = what
        raise
    if variables.requirements:  # a value that reads a table is not a constant
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "SET STATEMENT values must be constants", what)
    inner = dispatch(sql, tokens[i + 1 :], current_db)
    if inner.kind is StatementKind.DENIED:
        assert inner.deny is not None
        raise Denied(inner.deny.code, inner.deny.detail, what)
    if inner.kind is not StatementKind.QUERY or inner.statement_class not in _SET_STATEMENT_CLASSES:
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            f"SET STATEMENT ... FOR {inner.statement_class} is not supported "
            "(only SELECT, INSERT, UPDATE, DELETE and REPLACE)",
            what,
        )
    if inner.metadata_tables:
        raise Denied(
            DenyCode.METADATA,
            "information_schema cannot be read inside SET STATEMENT; read it with SELECT",
            what,
        )
    # Its own class: a masked column is never rewritten inside it (decide.py refuses it).
    return dataclasses.replace(inner, statement_class=what)


def _assigns_sql_mode(tokens: list[Token]) -> bool:
    return any(
        tok.text.lower() == "sql_mode"
        and k + 1 < len(tokens)
        and tokens[k + 1].token_type in (TokenType.EQ, TokenType.COLON_EQ)
        for k, tok in enumerate(tokens)
    )


def _set_transaction(tokens: list[Token], i: int) -> Analysis:
    c = Cursor(tokens, i)
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
    return result(StatementKind.SET, "SET TRANSACTION")


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
        raise Denied(DenyCode.CHARSET, "the character set must be given by name")
    if name.upper() == "DEFAULT" and not isinstance(value, exp.Literal):
        return
    if name.lower() not in ALLOWED_CHARSETS:
        raise Denied(
            DenyCode.CHARSET,
            f"character set {name} is not allowed (one of {', '.join(sorted(ALLOWED_CHARSETS))})",
        )


def _check_collation(value: exp.Expr | None) -> None:
    name = _simple_name(value)
    if name is None:
        raise Denied(DenyCode.CHARSET, "the collation must be given by name")
    lower = name.lower()
    if lower == "default" and not isinstance(value, exp.Literal):
        return
    if lower == "binary" or any(
        lower.startswith(cs + "_") for cs in ALLOWED_CHARSETS if cs != "binary"
    ):
        return
    raise Denied(DenyCode.CHARSET, f"collation {name} is not allowed")


def _check_set_item(item: exp.Expr) -> None:
    if not isinstance(item, exp.SetItem):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "SET of an unsupported form")
    if item.args.get("global_"):
        raise Denied(DenyCode.SYSTEM_VARIABLE, "SET GLOBAL changes the server for every session")
    kind = str(item.args.get("kind") or "").upper()
    if kind == "NAMES":
        check_args(item, frozenset({"this", "kind", "collate"}), "SET NAMES")
        _check_charset(item.this)
        if item.args.get("collate") is not None:
            _check_collation(item.args.get("collate"))
        return
    if kind == "CHARACTER SET":
        check_args(item, frozenset({"this", "kind"}), "SET CHARACTER SET")
        _check_charset(item.this)
        return
    if kind not in _SESSION_KINDS:
        if kind in ("GLOBAL", "PERSIST", "PERSIST_ONLY"):
            raise Denied(
                DenyCode.SYSTEM_VARIABLE, f"SET {kind} changes the server for every session"
            )
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"SET {kind} is not supported")
    check_args(item, frozenset({"this", "kind"}), "SET")
    assignment = item.this
    if not isinstance(assignment, (exp.EQ, exp.PropertyEQ)):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "SET of an unsupported form")
    target, value = assignment.this, assignment.expression
    if isinstance(target, exp.Parameter):  # a user variable: @v = expr
        if kind:
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"SET {kind} @variable is not valid")
        return
    name, scope = _system_variable(target)
    if scope not in _SESSION_KINDS:
        raise Denied(
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
        check_sql_mode(value)
        return
    raise Denied(DenyCode.SYSTEM_VARIABLE, f"setting the system variable {name} is not allowed")


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


def check_sql_mode(value: exp.Expr | None) -> None:
    """`sql_mode` may be set to safe modes only: a string literal, or CONCAT(@@sql_mode, literals)
    (drivers such as MariaDB Connector/J append STRICT_TRANS_TABLES at connect). The session's
    current value is safe because the proxy pins it so, and clients only ever add safe modes.
    DEFAULT is refused: the global value may hold ANSI_QUOTES."""
    literals: list[exp.Expr] = []
    if isinstance(value, exp.Concat):
        first, *rest = value.expressions or [None]
        if not (isinstance(first, exp.SessionParameter) and str(first.name).lower() == "sql_mode"
                and str(first.args.get("kind") or "SESSION").upper() == "SESSION"):
            raise Denied(DenyCode.SYSTEM_VARIABLE, "sql_mode may only be extended from @@sql_mode")
        literals = rest
    else:
        literals = [value] if value is not None else []
    if not literals:
        raise Denied(DenyCode.SYSTEM_VARIABLE, "sql_mode must be set to a list of modes")
    for lit in literals:
        if not (isinstance(lit, exp.Literal) and lit.is_string):
            raise Denied(DenyCode.SYSTEM_VARIABLE, "sql_mode must be given as string literals")
        for mode in str(lit.this).split(","):
            mode = mode.strip().upper()
            if mode and mode not in SAFE_SQL_MODES:
                raise Denied(
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
        raise Denied(DenyCode.SYSTEM_VARIABLE, "structured system variables are not allowed")
    elif isinstance(target, (exp.Identifier, exp.Var)) and target.name:
        return target.name, ""
    raise Denied(DenyCode.SYSTEM_VARIABLE, "SET of an unsupported variable form")

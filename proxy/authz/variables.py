"""SET: user variables (`@v = expr`, reads checked like a SELECT), an allow-list of session
variables, character sets and collations that lex like UTF-8 or a single-byte charset, safe
`sql_mode` values, and SET TRANSACTION. Never GLOBAL / PERSIST."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from proxy.authz.model import Analysis, DenyCode, StatementKind
from proxy.authz.outcome import Denied, result
from proxy.authz.parse import parse_one, prepare
from proxy.authz.tokens import Cursor, leading_words, word
from proxy.authz.walk import Collector, check_args, collected, cross_check

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


def set_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    w = word(tokens[1]) if len(tokens) > 1 else None
    if w in ("GLOBAL", "PERSIST", "PERSIST_ONLY"):
        raise Denied(
            DenyCode.SYSTEM_VARIABLE, f"SET {w} changes the server for every session", "SET"
        )
    if w in ("PASSWORD", "ROLE", "STATEMENT", "RESOURCE") or (
        w == "DEFAULT" and len(tokens) > 2 and word(tokens[2]) == "ROLE"
    ):
        what = leading_words(tokens, 3 if w in ("DEFAULT", "RESOURCE") else 2)
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} is not supported", what)
    if w == "TRANSACTION":
        return _set_transaction(tokens, 2)
    if w in ("SESSION", "LOCAL") and len(tokens) > 2 and word(tokens[2]) == "TRANSACTION":
        return _set_transaction(tokens, 3)
    tree = parse_one(sql, prepare(tokens, sql.upper()))
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
    return collected(StatementKind.SET, "SET", c)


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

"""Statement analysis: SQL text + current database -> `Analysis` (what the statement needs).

Pure: no I/O, no clock, no logging; `analyze` never raises. Fail closed: a statement is allowed
only through an explicit branch; everything else is DENIED with a reason code.

The pipeline (each step can deny):
1. lexical checks on the raw text and sqlglot's MySQL tokens (tokens.py);
2. dispatch on the leading keyword (or two) to the handler of that statement class (below); a
   keyword without a handler is denied (unsupported.py explains the notable ones). Statements
   with a fixed grammar (SHOW, DESCRIBE, USE, KILL, transaction and lock control, CALL,
   PREPARE / EXECUTE, RENAME TABLE) are read straight from the tokens; the rest are parsed by
   sqlglot after token-level repairs and spelling checks (parse.py), and the parse must produce
   the tree type the keyword promises;
3. one walk over the tree resolves every table, checks every function call and collects reads;
   statement handlers mark write targets first (walk.py, dml.py, ddl.py);
4. cross-check: every `exp.Table` in the tree must have been classified by the walk.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from proxy.authz import (
    ddl,
    dml,
    explain,
    sql_prepare,
    routines,
    show,
    transactions,
    unsupported,
    utility,
    variables,
)
from proxy.authz.model import Analysis, DenyCode
from proxy.authz.names import canonical_db
from proxy.authz.outcome import Denied, denied, parse_error_detail
from proxy.authz.lexer import T_LPAREN, tokenize, unwrap_executable_comment, word

# Re-exported: the session variable rules live in variables.py.
SAFE_SQL_MODES = variables.SAFE_SQL_MODES
_check_sql_mode = variables.check_sql_mode


def analyze(sql: str, current_db: str | None, tokens: list[Token] | None = None) -> Analysis:
    """What `sql` needs when run with `current_db` as the default database (None: no database
    selected). Never raises: every failure is an Analysis with kind DENIED and a Deny.
    `tokens`: `lexer.raw_tokens(sql)` when the caller has them already (the analysis cache)."""
    try:
        if not isinstance(sql, str) or not (current_db is None or isinstance(current_db, str)):
            raise Denied(DenyCode.PARSE_ERROR, "the statement is not text")
        inner = unwrap_executable_comment(sql) if "/*" in sql else None
        if inner is not None:
            sql, tokens = inner, None  # what the server runs (see unwrap_executable_comment)
        tokens = tokenize(sql, tokens)
        if inner is not None and any(t.comments for t in tokens):
            raise Denied(DenyCode.EXECUTABLE_COMMENT, "comments inside an executable comment")
        return _statement(sql, tokens, canonical_db(current_db) if current_db else None)
    except Denied as d:
        return denied(d.code, d.detail, d.statement_class)
    except RecursionError:
        return denied(DenyCode.PARSE_ERROR, "the statement is nested too deeply")
    except (ParseError, TokenError) as e:
        return denied(DenyCode.PARSE_ERROR, parse_error_detail(e))
    except Exception:  # noqa: BLE001 - any analyzer defect must deny, never propagate
        return denied(DenyCode.PARSE_ERROR, "the statement could not be analyzed")


def _statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    first = tokens[0]
    keyword = "(" if first.token_type is T_LPAREN else word(first) or ""
    statement_class = _CLASS_OF_KEYWORD.get(keyword, keyword)
    handler = _HANDLERS.get(keyword)
    if keyword in _TWO_WORD_KEYWORDS and len(tokens) > 1:
        handler, statement_class = _TWO_WORD_HANDLERS.get(
            (keyword, word(tokens[1])), (handler, statement_class)
        )
    if handler is None:
        if len(tokens) > 1 and tokens[1].token_type is TokenType.COLON and (
            keyword or first.token_type is TokenType.IDENTIFIER
        ):
            raise Denied(  # `label: BEGIN ... END`, `label: LOOP ...`
                DenyCode.UNSUPPORTED_STATEMENT,
                "labelled compound statements belong in stored programs",
                "UNKNOWN",
            )
        # Not a statement MariaDB or MySQL knows: the server would answer a syntax error.
        raise Denied(
            DenyCode.PARSE_ERROR,
            f"the statement could not be parsed: no SQL statement starts with "
            f"{keyword or _what_token(first)}",
            keyword or "UNKNOWN",
        )
    try:
        return handler(sql, tokens, current_db)
    except Denied as d:
        if not d.statement_class:
            d.statement_class = statement_class
        raise
    except (ParseError, TokenError) as e:
        raise Denied(DenyCode.PARSE_ERROR, parse_error_detail(e), statement_class) from None


def _inner(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """A statement inside another (SET STATEMENT ... FOR stmt): analyzed as if sent alone; a
    denial comes back as a DENIED analysis."""
    try:
        return _statement(sql, tokens, current_db)
    except Denied as d:
        return denied(d.code, d.detail, d.statement_class)


def _what_token(tok: Token) -> str:
    if tok.token_type is TokenType.IDENTIFIER:
        return "a backquoted name"
    if tok.token_type is TokenType.NUMBER:
        return "a number"
    if tok.token_type is TokenType.PARAMETER:
        return "a variable"
    if "STRING" in tok.token_type.name:
        return "a string"
    return f"'{tok.text[:1]}'"


_Handler = Callable[[str, list[Token], "str | None"], Analysis]

_HANDLERS: dict[str, _Handler] = {
    **{k: dml.parsed_statement for k in dml.EXPECTED_TREE},
    "CREATE": lambda sql, tokens, db: ddl.create_statement(sql, tokens, db, dispatch=_inner),
    "ALTER": lambda sql, tokens, db: ddl.alter_statement(sql, tokens, db, dispatch=_inner),
    "DROP": ddl.drop_statement,
    "TRUNCATE": ddl.truncate_statement,
    "SET": lambda sql, tokens, db: variables.set_statement(sql, tokens, db, dispatch=_inner),
    "SHOW": show.show,
    "USE": utility.use,
    "KILL": utility.kill,
    "BEGIN": transactions.begin,
    "START": transactions.start,
    "COMMIT": transactions.end_transaction("COMMIT"),
    "ROLLBACK": transactions.end_transaction("ROLLBACK"),
    "EXPLAIN": explain.explain,
    "DESCRIBE": explain.explain,
    "DESC": explain.explain,
    "ANALYZE": explain.explain,
    "REPLACE": dml.replace_statement,
    "DO": dml.do_statement,
    "CALL": routines.call,
    "PREPARE": partial(sql_prepare.prepare, analyze),
    "EXECUTE": sql_prepare.execute,
    "DEALLOCATE": sql_prepare.deallocate,
    "RENAME": ddl.rename_statement,
    "SAVEPOINT": transactions.savepoint,
    "RELEASE": transactions.release,
    "XA": transactions.xa,
    "LOCK": transactions.lock_tables,
    "LOCK TABLES": transactions.lock_tables,
    "UNLOCK": transactions.unlock_tables,
    "UNLOCK TABLES": transactions.unlock_tables,
    "HELP": utility.help_statement,
    "GET": utility.get_diagnostics,
    **{k: unsupported.denier(k) for k in unsupported.REASONS},
}

# (keyword, next word) -> (handler, statement class), where the second word picks the class.
_TWO_WORD_HANDLERS: dict[tuple[str, str | None], tuple[_Handler | None, str]] = {
    ("DROP", "PREPARE"): (sql_prepare.deallocate, "DEALLOCATE PREPARE"),
}
_TWO_WORD_KEYWORDS = frozenset(k for k, _ in _TWO_WORD_HANDLERS)

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
    "DEALLOCATE": "DEALLOCATE PREPARE",
    "LOCK": "LOCK TABLES",
    "UNLOCK": "UNLOCK TABLES",
    "RENAME": "RENAME TABLE",
    "GET": "GET DIAGNOSTICS",
}

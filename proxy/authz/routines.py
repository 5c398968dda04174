"""CALL: a stored procedure runs with its definer's rights (SQL SECURITY DEFINER, the default),
so it may read and write anything its definer can: a grant of EXECUTE on the procedure is a grant
on everything it touches. CALL db.proc(args) needs EXECUTE on (db, proc), resolved with the
current database like a table (NO_DATABASE without one), plus SELECT on what the arguments read.
Routine names compare case-insensitively: they are ASCII-only here and folded to lower case.

Stored functions called inside expressions (`db.fn(x)`, or a name that is not a built-in) stay
denied as UNKNOWN_FUNCTION (see walk.py and functions.py).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from proxy.authz.dml import METADATA_IN_COMMAND
from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind
from proxy.authz.names import canonical_routine
from proxy.authz.outcome import Denied
from proxy.authz.parse import parse_one, prepare
from proxy.authz.lexer import T_LPAREN, T_RPAREN, Cursor, retyped
from proxy.authz.walk import Collector, check_args, collected, cross_check, table_ref


def call(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    c = Cursor(tokens, 1)
    db, name = c.table_name()
    if not name.isascii():
        raise Denied(DenyCode.SUSPICIOUS_NAME, "routine names must be ASCII")
    if db is None:
        if current_db is None:
            raise Denied(
                DenyCode.NO_DATABASE, f"no database selected for procedure {name}; use db.proc"
            )
        db = current_db
    table_ref(db, name)  # the naming checks every table name passes
    requirements = {Requirement(canonical_routine(db, name), Privilege.EXECUTE)}
    collector = Collector(current_db)
    open_at = c.i
    if c.accept_type(T_LPAREN) is not None:
        if _closing_paren(tokens, open_at) != len(tokens) - 1:
            raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "CALL of an unsupported form")
        arguments = tokens[open_at + 1 : -1]
        if arguments:
            # The arguments are expressions: read them as the select list they would be.
            select = [retyped(tokens[open_at], TokenType.SELECT)] + arguments
            tree = parse_one(sql, prepare(select, sql.upper()))
            if not isinstance(tree, exp.Select):
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT, "CALL arguments of an unsupported form"
                )
            check_args(tree, frozenset({"expressions"}), "CALL arguments")
            collector.walk(tree)
            cross_check(tree, collector)
            if collector.metadata:
                raise Denied(DenyCode.METADATA, METADATA_IN_COMMAND.format("CALL"))
    else:
        c.expect_end()
    return collected(StatementKind.QUERY, "CALL", collector, requirements)


def _closing_paren(tokens: list[Token], open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(tokens)):
        tt = tokens[i].token_type
        if tt is T_LPAREN:
            depth += 1
        elif tt is T_RPAREN:
            depth -= 1
            if depth == 0:
                return i
    return -1

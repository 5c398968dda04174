"""Every error the proxy answers with itself: MySQL's codes and SQLSTATEs, the texts of its
denials, and the ERR packets they become (`packet`). A raw exception's text never reaches a
client: only `ClientError.message`. (Errors the database sent are relayed as they are, or
rewritten by `relabelled`.)"""

from __future__ import annotations

from proxy.authz.model import Decision, DenyCode
from proxy.mysql.wire import make_err


class ER:
    """The MySQL error codes jitproxy itself answers with, and their SQLSTATE."""

    ACCESS_DENIED = 1045
    DBACCESS_DENIED = 1044
    TABLEACCESS_DENIED = 1142
    HANDSHAKE_ERROR = 1043
    UNKNOWN_COM = 1047
    NET_PACKET_TOO_LARGE = 1153
    PACKETS_OUT_OF_ORDER = 1156
    KILL_DENIED = 1095
    NO_SUCH_THREAD = 1094
    CONNECTION_KILLED = 1927
    QUERY_INTERRUPTED = 1317
    UNKNOWN_CHARACTER_SET = 1115
    UNKNOWN_STMT_HANDLER = 1243
    SECURE_TRANSPORT_REQUIRED = 3159
    NOT_SUPPORTED = 1235
    UPSTREAM_UNAVAILABLE = 2003
    UPSTREAM_LOST = 2013
    INTERNAL = 1105
    AUDIT_UNAVAILABLE = 1105  # ER_UNKNOWN_ERROR: fail_closed refused a statement it could not audit
    TOO_MANY_CONNECTIONS = 1040
    TOO_BIG_SELECT = 1104
    CLIENT_INTERACTION_TIMEOUT = 4031  # MySQL 8.0.24+: told before an idle connection is closed
    MALFORMED_PACKET = 1835  # ER_MALFORMED_PACKET: a command's bytes do not parse (truncated, overrun)
    TOO_MANY_USER_CONNECTIONS = 1203
    PARSE_ERROR = 1064  # ER_PARSE_ERROR: SQL the proxy cannot read
    HOST_IS_BLOCKED = 1129
    ACCOUNT_LOCKED = 3955  # MySQL 8: ER_USER_ACCESS_DENIED_FOR_USER_ACCOUNT_BLOCKED_BY_PASSWORD_LOCK
    STATEMENT_TIMEOUT_MARIADB = 1969  # ER_STATEMENT_TIMEOUT (max_statement_time)
    STATEMENT_TIMEOUT_MYSQL = 3024  # ER_QUERY_TIMEOUT (max_execution_time)


SQLSTATES = {
    ER.ACCESS_DENIED: "28000",
    ER.DBACCESS_DENIED: "42000",
    ER.TABLEACCESS_DENIED: "42000",
    ER.HANDSHAKE_ERROR: "08S01",
    ER.UNKNOWN_COM: "08S01",
    ER.NET_PACKET_TOO_LARGE: "08S01",
    ER.PACKETS_OUT_OF_ORDER: "08S01",
    ER.KILL_DENIED: "HY000",
    ER.NO_SUCH_THREAD: "HY000",
    ER.CONNECTION_KILLED: "70100",
    ER.QUERY_INTERRUPTED: "70100",
    ER.UNKNOWN_CHARACTER_SET: "42000",
    ER.UNKNOWN_STMT_HANDLER: "HY000",
    ER.SECURE_TRANSPORT_REQUIRED: "HY000",
    ER.NOT_SUPPORTED: "42000",
    ER.UPSTREAM_UNAVAILABLE: "HY000",
    ER.UPSTREAM_LOST: "HY000",
    ER.INTERNAL: "HY000",
    ER.TOO_MANY_CONNECTIONS: "08004",
    ER.TOO_BIG_SELECT: "42000",
    ER.CLIENT_INTERACTION_TIMEOUT: "HY000",
    ER.MALFORMED_PACKET: "HY000",
    ER.TOO_MANY_USER_CONNECTIONS: "42000",
    ER.PARSE_ERROR: "42000",
    ER.HOST_IS_BLOCKED: "HY000",
    ER.ACCOUNT_LOCKED: "HY000",
    ER.STATEMENT_TIMEOUT_MARIADB: "70100",
    ER.STATEMENT_TIMEOUT_MYSQL: "HY000",
}


class ClientError(Exception):
    def __init__(self, code: int, message: str, keep_connection: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.sqlstate = SQLSTATES.get(code, "HY000")
        self.message = message
        self.keep_connection = keep_connection


def packet(error: ClientError) -> bytes:
    """The ERR payload of `error`."""
    return make_err(error.code, error.sqlstate, error.message)


def relabelled(code: int, sqlstate: str, message: str) -> bytes:
    """An ERR payload from the database, with a message the proxy rewrote (the shared account
    named as the person, a statement it cancelled said so)."""
    return make_err(code, sqlstate, message)


UPSTREAM_LOST = ClientError(ER.UPSTREAM_LOST, "Lost connection to the database during query (jitproxy)",
                            keep_connection=False)


def statement_timeout(mariadb: bool, limit_s: float | None, instance: str) -> bytes:
    """A statement the proxy cancelled at its instance's time limit, as the server's own timeout."""
    code = ER.STATEMENT_TIMEOUT_MARIADB if mariadb else ER.STATEMENT_TIMEOUT_MYSQL
    return packet(ClientError(code, f"Query execution was interrupted by jitproxy: the statement ran longer than "
                                    f"{limit_s or 0:g} s, the limit of instance '{instance}' (statement_timeout_s)"))


def denied(decision: Decision, user: str, hint: str) -> ClientError:
    """What a person is told of a refused statement: MySQL's error for the case (1044, 1142,
    1064 ...), the reason code, and `hint` (the command that asks for the access)."""
    if decision.code is DenyCode.DATABASE_ACCESS:
        db = next(iter(sorted(decision.analysis.database_access)), "?")
        return ClientError(
            ER.DBACCESS_DENIED,
            f"Access denied for user '{user}' to database '{db}' (jitproxy: database_access). {hint}",
        )
    if decision.code is DenyCode.MISSING_GRANT and decision.missing:
        first = decision.missing[0]
        more = f" and {len(decision.missing) - 1} more" if len(decision.missing) > 1 else ""
        return ClientError(
            ER.TABLEACCESS_DENIED,
            f"{first.privilege.value} command denied to user '{user}' for table "
            f"'{first.target}'{more} (jitproxy: missing_grant). {hint}",
        )
    code = decision.code.value if decision.code else "denied"
    if decision.code is DenyCode.PARSE_ERROR:
        # What the server says of SQL it cannot read (drivers raise ProgrammingError): nothing
        # was sent to it. Valid SQL refused this way is a gap in jitproxy's grammar.
        return ClientError(
            ER.PARSE_ERROR,
            f"You have an error in your SQL syntax, or SQL jitproxy cannot parse (jitproxy: parse_error): "
            f"{decision.reason}. Nothing was sent to the database.",
        )
    return ClientError(ER.TABLEACCESS_DENIED, f"Statement denied by jitproxy ({code}): {decision.reason}")


class UpstreamLost(Exception):
    """The pinned upstream connection failed mid-command; the session cannot continue."""


def max_rows_error(limit: int) -> bytes:
    """The ERR payload that replaces the first row over a grant's max_rows."""
    return packet(ClientError(
        ER.TOO_BIG_SELECT,
        f"The result has more than {limit} rows, the limit of your grant (jitproxy: max_rows); "
        "narrow it with WHERE or LIMIT",
    ))

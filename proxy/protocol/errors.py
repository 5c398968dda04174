"""Errors that cross to the client, converted once, with MySQL's codes and SQLSTATEs.
A raw exception's text never reaches a client: only `ClientError.message`."""

from __future__ import annotations

from proxy.protocol.wire import make_err


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


class UpstreamLost(Exception):
    """The pinned upstream connection failed mid-command; the session cannot continue."""


def max_rows_error(limit: int) -> bytes:
    """The ERR payload that replaces the first row over a grant's max_rows."""
    return make_err(
        ER.TOO_BIG_SELECT,
        "42000",
        f"The result has more than {limit} rows, the limit of your grant (jitproxy: max_rows); "
        "narrow it with WHERE or LIMIT",
    )

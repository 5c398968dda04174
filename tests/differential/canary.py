"""The person's statements through the real proxy: responses scanned for canaries, and the
statements the proxy refused remembered so that MariaDB's general log can prove none of them
reached the database."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any

import pymysql

from proxy.authz.model import Decision, StatementKind
from tests.differential.harness import SESSION_LIMITS, STATELESS_CLASSES, Case, Jit, quietly

# Every denial message of the proxy ends with its reason code in this form (session.py).
_PROXY_DENIAL = re.compile(r"\(jitproxy: [a-z_]+\)|denied by jitproxy \(")


@dataclass
class ProxyResponse:
    ok: bool
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    warnings: list[tuple[Any, ...]] = field(default_factory=list)
    error_code: int | None = None
    error_message: str = ""
    not_sent: bool = False  # the connection could not be opened

    @property
    def denied_by_proxy(self) -> bool:
        return not self.ok and _PROXY_DENIAL.search(self.error_message) is not None

    def texts(self) -> list[str]:
        """Every piece of text the client received."""
        out = list(self.columns) + [self.error_message]
        for row in [*self.rows, *self.warnings]:
            for value in row:
                if isinstance(value, (bytes, bytearray)):
                    out.append(bytes(value).decode("utf-8", "replace"))
                    out.append(bytes(value).decode("latin-1"))
                elif value is not None:
                    out.append(str(value))
        return out


class ViaProxy:
    """The person's session through the running proxy: one connection per current database,
    reopened after any statement that may have changed session state."""

    def __init__(self, port: int, user: str, token: str, tls: ssl.SSLContext) -> None:
        self.port, self.user, self.token, self.tls = port, user, token, tls
        self._conns: dict[str | None, pymysql.Connection] = {}

    def _connect(self, db: str | None) -> pymysql.Connection:
        conn = self._conns.get(db)
        if conn is None:
            conn = pymysql.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.user,
                password=self.token,
                database=db,
                ssl=self.tls,
                charset="utf8mb4",
                autocommit=False,  # every statement is rolled back afterwards
                init_command=f"SET {SESSION_LIMITS}",
                program_name="differential",
            )
            self._conns[db] = conn
        return conn

    def reset(self, db: str | None) -> None:
        conn = self._conns.pop(db, None)
        if conn is not None:
            quietly(conn.close)

    def close(self) -> None:
        for db in list(self._conns):
            self.reset(db)

    def run(self, sql: str, db: str | None, *, keep_session: bool) -> ProxyResponse:
        try:
            conn = self._connect(db)
        except pymysql.MySQLError as e:  # e.g. login into a database the person may not use
            code = e.args[0] if e.args and isinstance(e.args[0], int) else -1
            return ProxyResponse(False, error_code=code, error_message=str(e.args[-1]), not_sent=True)
        broken = False
        response = ProxyResponse(False, error_code=-1, error_message="no response")
        try:
            with conn.cursor() as cur:
                try:
                    cur.execute(sql)
                    columns = [d[0] for d in cur.description or ()]
                    response = ProxyResponse(True, columns, list(cur.fetchall()))
                except pymysql.MySQLError as e:
                    code = e.args[0] if e.args and isinstance(e.args[0], int) else -1
                    response = ProxyResponse(False, error_code=code, error_message=str(e.args[-1]) if e.args else "")
                    broken = code == 0 or code >= 2000  # client-side: the connection is gone
                if not broken:
                    cur.execute("SHOW WARNINGS")
                    response.warnings = list(cur.fetchall())
                    conn.rollback()
        except (pymysql.MySQLError, OSError):
            broken = True
        if broken or not keep_session:
            self.reset(db)
        return response


class CanaryCheck:
    """Scans what the client received for canaries, and remembers the statements the proxy
    refused so that the general log can prove none of them reached MariaDB."""

    def __init__(self, values: list[str], names: list[str]) -> None:
        self.canaries = [c.lower() for c in values + names]
        self.refused: list[tuple[str, str]] = []  # (marker, sql)
        self.sent = 0

    def scan(self, sql: str, response: ProxyResponse) -> list[str]:
        typed = sql.lower()
        texts = [t.lower() for t in response.texts()]
        return [c for c in self.canaries if c not in typed and any(c in t for t in texts)]

    def assert_never_reached(self, log: str, sentinel: str) -> None:
        assert sentinel in log, "the general log is not up to date: the sentinel statement is missing"
        reached = [(m, sql) for m, sql in self.refused if m in log]
        assert reached == [], "statements the proxy refused reached MariaDB:\n" + "\n".join(
            sql for _, sql in reached
        )


@dataclass(frozen=True)
class ProxyCheck:
    """One statement through the real proxy, tagged with a unique marker."""

    sql: str
    marker: str
    decision: Decision
    response: ProxyResponse
    canaries: list[str]

    @property
    def bypassed_decision(self) -> bool:
        """The session let through a statement that analyze + decide refuse."""
        return not self.decision.allowed and not self.response.not_sent and not self.response.denied_by_proxy


def through_proxy(case: Case, tagged_sql: str, marker: str, jit: Jit, via: ViaProxy, check: CanaryCheck) -> ProxyCheck:
    decision = jit.decide(tagged_sql, case.db)
    # A refused statement changes nothing; a forwarded one other than a query may change the
    # session (SET, USE, LOCK TABLES, transactions): the next statement gets a fresh session.
    analysis = decision.analysis
    stateless = (
        not decision.allowed
        or analysis.kind is StatementKind.SHOW
        or (analysis.kind is StatementKind.QUERY and analysis.statement_class in STATELESS_CLASSES)
    )
    response = via.run(tagged_sql, case.db, keep_session=stateless)
    if not response.not_sent:
        check.sent += 1
        if not decision.allowed or response.denied_by_proxy:
            check.refused.append((marker, tagged_sql))
    return ProxyCheck(tagged_sql, marker, decision, response, check.scan(tagged_sql, response))

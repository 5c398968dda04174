"""Run one statement both ways and compare: jitproxy's decision (analyze + decide with the
policy's grants) against MariaDB's own privilege check (the statement executed as the
equivalent account, inside a transaction that is rolled back).

Vocabulary:
- MariaDB *denies* a statement when it answers with a privilege error (`PRIVILEGE_ERRORS`);
  it *allows* it when it runs it or fails for another reason after its privilege checks
  (unknown column, duplicate key, time limit...). A syntax error (`SYNTAX_ERRORS`) is neither:
  MariaDB never reached its privilege checks.
- A **leak**: jitproxy allows, MariaDB denies. Never acceptable.
- A **false denial**: jitproxy denies for a grant-related reason (missing grant, unaccounted
  table, naming...) while MariaDB allows.
- A **deliberate denial**: jitproxy refuses the statement whoever runs it, for a reason MariaDB
  has no notion of (`DELIBERATE`): counted apart, whatever MariaDB says.
"""

from __future__ import annotations

import enum
import ssl
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pymysql

from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet, decide
from proxy.authz.model import Decision, DenyCode, Grant, Principal, StatementKind
from proxy.demo.mariadb import LocalMariaDB

# MariaDB error codes that mean "your account may not do this".
PRIVILEGE_ERRORS = {
    1044: "ER_DBACCESS_DENIED_ERROR",
    1045: "ER_ACCESS_DENIED_ERROR",  # also: a global privilege such as FILE is missing
    1046: "ER_NO_DB_ERROR",  # refused for the same reason as jitproxy's no_database_selected
    1095: "ER_KILL_DENIED_ERROR",
    1131: "ER_PASSWORD_ANONYMOUS_USER",
    1132: "ER_PASSWORD_NOT_ALLOWED",
    1142: "ER_TABLEACCESS_DENIED_ERROR",
    1143: "ER_COLUMNACCESS_DENIED_ERROR",
    1211: "ER_NO_PERMISSION_TO_CREATE_USER",
    1227: "ER_SPECIFIC_ACCESS_DENIED_ERROR",
    1356: "ER_VIEW_INVALID",  # may hide a definer's missing rights: counted as a refusal
    1370: "ER_PROCACCESS_DENIED_ERROR",
    1410: "ER_CANT_CREATE_USER_WITH_GRANT",
    1698: "ER_ACCESS_DENIED_NO_PASSWORD_ERROR",
}
SYNTAX_ERRORS = {1064: "ER_PARSE_ERROR", 1149: "ER_SYNTAX_ERROR"}

# Statement-level refusals MariaDB has no equivalent of (README "what the proxy cannot fully
# understand is denied", plus the guardrails).
DELIBERATE = frozenset(
    {
        DenyCode.MULTIPLE_STATEMENTS,
        DenyCode.EXECUTABLE_COMMENT,
        DenyCode.UNSUPPORTED_STATEMENT,
        DenyCode.UNKNOWN_FUNCTION,
        DenyCode.DENIED_FUNCTION,
        DenyCode.SYSTEM_VARIABLE,
        DenyCode.SELECT_INTO,
        DenyCode.CHARSET,
        DenyCode.STATEMENT_TOO_LONG,
        DenyCode.EMPTY_STATEMENT,
        DenyCode.UNBOUNDED_WRITE,
        DenyCode.METADATA,
    }
)
# Statements the proxy answers itself rather than forwarding: MariaDB's verdict on them says
# nothing about the proxy (KILL names proxy sessions, not server threads).
PROXY_HANDLED = frozenset({StatementKind.KILL})

STATEMENT_TIME_LIMIT_S = 0.5  # bounds SLEEP()/BENCHMARK() in the corpus on both paths


class Server(str, enum.Enum):
    RAN = "ran"
    FAILED = "failed"  # a non-privilege error: the privilege checks passed
    SYNTAX = "syntax"
    DENIED = "denied"
    NOT_RUN = "not run"


class Verdict(str, enum.Enum):
    AGREE_ALLOW = "agree-allow"
    AGREE_DENY = "agree-deny"
    LEAK = "leak"
    FALSE_DENIAL = "false-denial"
    DELIBERATE = "deliberate"
    BOTH_SYNTAX = "jitproxy-denies-mariadb-syntax-error"
    ALLOWED_SYNTAX = "jitproxy-allows-mariadb-syntax-error"
    PROXY_HANDLED = "proxy-handled"


@dataclass(frozen=True)
class ServerOutcome:
    server: Server
    code: int | None = None
    message: str = ""

    def __str__(self) -> str:
        return self.server.value if self.code is None else f"{self.server.value} {self.code}: {self.message[:160]}"


@dataclass(frozen=True)
class Case:
    """One statement of a statement set."""

    name: str
    sql: str
    db: str | None


@dataclass(frozen=True)
class Result:
    case: Case
    decision: Decision
    server: ServerOutcome
    verdict: Verdict

    def describe(self) -> str:
        d = self.decision
        jit = "ALLOW" if d.allowed else f"DENY {d.code.value if d.code else '?'} ({d.reason[:120]})"
        reqs = ", ".join(sorted(str(r) for r in d.analysis.requirements)) or "-"
        return (
            f"[{self.case.name}] db={self.case.db} sql={self.case.sql!r}\n"
            f"    jitproxy: {jit}; requires: {reqs}\n    mariadb:  {self.server}"
        )


class Jit:
    """jitproxy's decision for the person, exactly as the session computes it."""

    def __init__(self, grants: tuple[Grant, ...] | list[Grant], user: str) -> None:
        self.grants = GrantSet(grants, version="differential")
        self.principal = Principal(user=user)
        self.now = datetime.now(timezone.utc)

    def decide(self, sql: str, db: str | None) -> Decision:
        return decide(analyze(sql, db), self.principal, self.grants, self.now)


class Direct:
    """Statements as the person's own MariaDB account, each on a fresh connection (no session
    state carries over) inside a transaction that is rolled back."""

    def __init__(self, mariadb: LocalMariaDB, user: str, password: str) -> None:
        self.mariadb, self.user, self.password = mariadb, user, password

    def connect(self, db: str | None) -> pymysql.Connection:
        return pymysql.connect(
            unix_socket=str(self.mariadb.socket_path),
            user=self.user,
            password=self.password,
            database=db,
            charset="utf8mb4",
            autocommit=False,
            ssl_disabled=True,  # a unix socket; also skips PyMySQL's costly default TLS context
            init_command=f"SET SESSION max_statement_time = {STATEMENT_TIME_LIMIT_S}",
        )

    def run(self, sql: str, db: str | None) -> ServerOutcome:
        conn = self.connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.fetchall()
                while cur.nextset():
                    cur.fetchall()
            return ServerOutcome(Server.RAN)
        except pymysql.MySQLError as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else -1
            message = str(e.args[-1]) if e.args else repr(e)
            if code in PRIVILEGE_ERRORS:
                return ServerOutcome(Server.DENIED, code, message)
            if code in SYNTAX_ERRORS:
                return ServerOutcome(Server.SYNTAX, code, message)
            return ServerOutcome(Server.FAILED, code, message)
        except UnicodeEncodeError as e:  # e.g. a lone surrogate: nothing could be sent
            return ServerOutcome(Server.NOT_RUN, None, f"not sendable: {e}")
        finally:
            try:
                conn.rollback()
            except pymysql.MySQLError:
                pass
            conn.close()


def classify(decision: Decision, server: ServerOutcome) -> Verdict:
    if decision.analysis.kind in PROXY_HANDLED:
        return Verdict.PROXY_HANDLED
    if decision.allowed:
        if server.server is Server.DENIED:
            return Verdict.LEAK
        if server.server is Server.SYNTAX:
            return Verdict.ALLOWED_SYNTAX
        return Verdict.AGREE_ALLOW
    if decision.code in DELIBERATE:
        return Verdict.DELIBERATE
    if server.server is Server.DENIED:
        return Verdict.AGREE_DENY
    if server.server is Server.SYNTAX:
        return Verdict.BOTH_SYNTAX
    return Verdict.FALSE_DENIAL


def compare(case: Case, jit: Jit, direct: Direct) -> Result:
    decision = jit.decide(case.sql, case.db)
    if decision.analysis.kind in PROXY_HANDLED:
        server = ServerOutcome(Server.NOT_RUN, None, "answered by the proxy itself")
    else:
        server = direct.run(case.sql, case.db)
    return Result(case, decision, server, classify(decision, server))


@dataclass
class Tally:
    """The numbers of one statement set, deduplicated by (sql, db)."""

    label: str
    results: dict[tuple[str, str | None], Result] = field(default_factory=dict)
    skipped: int = 0

    def add(self, result: Result) -> None:
        self.results[(result.case.sql, result.case.db)] = result

    def of(self, verdict: Verdict) -> list[Result]:
        return [r for r in self.results.values() if r.verdict is verdict]

    @property
    def mariadb_allowed(self) -> int:
        return sum(1 for r in self.results.values() if r.server.server in (Server.RAN, Server.FAILED))

    @property
    def false_denial_ratio(self) -> float:
        return len(self.of(Verdict.FALSE_DENIAL)) / max(self.mariadb_allowed, 1)

    def summary(self) -> str:
        n = len(self.results)
        fd = len(self.of(Verdict.FALSE_DENIAL))
        deliberate = self.of(Verdict.DELIBERATE)
        deliberate_ran = sum(1 for r in deliberate if r.server.server in (Server.RAN, Server.FAILED))
        parts = [
            f"differential[{self.label}]: {n} statements",
            f"{len(self.of(Verdict.LEAK))} leaks",
            f"{fd} false denials ({100 * self.false_denial_ratio:.1f}% of {self.mariadb_allowed} MariaDB-allowed)",
            f"{len(deliberate)} deliberate denials ({deliberate_ran} of them MariaDB-allowed)",
            f"{len(self.of(Verdict.AGREE_ALLOW))} agree-allow",
            f"{len(self.of(Verdict.AGREE_DENY))} agree-deny",
            f"{len(self.of(Verdict.BOTH_SYNTAX)) + len(self.of(Verdict.ALLOWED_SYNTAX))} MariaDB syntax errors "
            f"({len(self.of(Verdict.ALLOWED_SYNTAX))} allowed by jitproxy)",
        ]
        if self.of(Verdict.PROXY_HANDLED):
            parts.append(f"{len(self.of(Verdict.PROXY_HANDLED))} answered by the proxy")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return ", ".join(parts)

    def false_denial_reasons(self) -> Counter[str]:
        return Counter(
            r.decision.code.value if r.decision.code else "?" for r in self.of(Verdict.FALSE_DENIAL)
        )

    def report(self, verdict: Verdict, limit: int = 40) -> str:
        found = sorted(self.of(verdict), key=lambda r: r.case.name)
        lines = [r.describe() for r in found[:limit]]
        if len(found) > limit:
            lines.append(f"... and {len(found) - limit} more")
        return "\n".join(lines)


# -- through the real proxy -----------------------------------------------------------------

JITPROXY_DENIAL_TAG = "jitproxy"  # every denial message of the proxy names itself


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
        return not self.ok and JITPROXY_DENIAL_TAG in self.error_message

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
                init_command=f"SET max_statement_time = {STATEMENT_TIME_LIMIT_S}",
                program_name="differential",
            )
            self._conns[db] = conn
        return conn

    def reset(self, db: str | None) -> None:
        conn = self._conns.pop(db, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already gone
                pass

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
    stateless = decision.allowed and decision.analysis.kind in (StatementKind.QUERY, StatementKind.SHOW)
    response = via.run(tagged_sql, case.db, keep_session=stateless)
    if not response.not_sent:
        check.sent += 1
        if not decision.allowed or response.denied_by_proxy:
            check.refused.append((marker, tagged_sql))
    return ProxyCheck(tagged_sql, marker, decision, response, check.scan(tagged_sql, response))

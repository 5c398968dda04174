"""Run one statement both ways and compare: jitproxy's decision (analyze + decide with the
policy's grants) against MariaDB's own privilege check (the statement executed as the
equivalent account, inside a transaction that is rolled back).

Vocabulary:
- MariaDB *denies* a statement when it answers the person's account with a privilege error
  (`PRIVILEGE_ERRORS`). It *allows* it when it runs it, or fails for another reason after its
  privilege checks (unknown column, duplicate key, time limit...). Which errors come before the
  privilege checks is found out, not listed: a statement that fails the same way for an account
  without any privilege ("nobody") was rejected before them (syntax, malformed or duplicate
  names, bad CTEs...): MariaDB has no verdict on it, it counts neither as allowed nor denied.
- A **leak**: jitproxy allows, MariaDB denies. Never acceptable. One exception is checked, not
  assumed: MariaDB answers some invalid statements with a table or column privilege error that
  even an account holding ALL on the scratch databases gets (a multi-table UPDATE naming a
  column its JSON_TABLE lacks: 1143 for root too). Such a denial of a query/DML statement is
  re-run as the proxy's own upstream account (ALL on diff_*, nothing else); if that gets the
  very same error about a scratch object, forwarding it could not leak anything either: it is
  reported apart as "refused to every account".
- A **false denial**: jitproxy denies for a grant-related reason (missing grant, unaccounted
  table, naming, parse failure...) while MariaDB allows.
- A **deliberate denial**: jitproxy refuses the statement whoever runs it, for a reason MariaDB
  has no notion of (`DELIBERATE`): counted apart, whatever MariaDB says.
"""

from __future__ import annotations

import enum
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pymysql

from jitproxy_demo.mariadb import Credentials, LocalMariaDB, native_password_hash
from proxy.authz import views
from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet, decide, stars_needing_schema
from proxy.authz.model import Decision, DenyCode, Grant, Principal, StatementKind, TableRef

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
# Client-side errors: the server is gone (or crashed: see grammar.crashes_mariadb).
CONNECTION_LOST = frozenset({0, 2002, 2003, 2006, 2013})
STATEMENT_TIMEOUT = 1969  # ER_STATEMENT_TIMEOUT: it was executing, so its privilege checks passed

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

# Bounds BENCHMARK() and the like in the corpus on both paths. Generous on purpose: MariaDB
# 10.11.19 can crash when this limit interrupts a statement while it creates a temporary table
# (seen for a plain UNION under load), so ordinary statements must never come near it.
STATEMENT_TIME_LIMIT_S = 1.5
LOCK_WAIT_TIMEOUT_S = 2  # a lock left behind (LOCK TABLES, FOR UPDATE) fails a case, never hangs it
SESSION_LIMITS = (
    f"max_statement_time = {STATEMENT_TIME_LIMIT_S}, lock_wait_timeout = {LOCK_WAIT_TIMEOUT_S}, "
    f"innodb_lock_wait_timeout = {LOCK_WAIT_TIMEOUT_S}"
)
# Statement classes that leave nothing behind in a session once rolled back; any other forwarded
# statement (SET, USE, LOCK TABLES, temporary tables, XA...) gets a fresh session afterwards.
STATELESS_CLASSES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "EXPLAIN"})
# Classes re-run as the upstream account to check a denial (rolled back; scratch tables are InnoDB).
REPLAYABLE_CLASSES = STATELESS_CLASSES
SCRATCH_DATABASES = frozenset({"diff_a", "diff_b", "diff_c", "diff_d", "diff_e"})
_DENIED_TABLE = re.compile(r"for table `([^`]*)`\.`")
# Statements that may change an account itself (its own password, default role): the accounts
# are put back after them, so that no case affects the next.
_ACCOUNT_WORDS = re.compile(r"\b(PASSWORD|IDENTIFIED|ROLE|USER)\b", re.IGNORECASE)


class Server(str, enum.Enum):
    RAN = "ran"
    FAILED = "failed"  # a non-privilege error after the privilege checks passed
    INVALID = "rejected before privilege checks"  # the same error for an account without privileges
    REFUSES_EVERYONE = "refused to every account"  # the same privilege error for an all-privileged one
    DENIED = "denied"
    NOT_RUN = "not run"


class Verdict(str, enum.Enum):
    AGREE_ALLOW = "agree-allow"
    AGREE_DENY = "agree-deny"
    LEAK = "leak"
    FALSE_DENIAL = "false-denial"
    DELIBERATE = "deliberate"
    BOTH_REFUSE_INVALID = "jitproxy-denies-unchecked"
    ALLOWS_INVALID = "jitproxy-allows-unchecked"  # MariaDB rejects it unread: not a leak
    ALLOWS_REFUSED_TO_ALL = "jitproxy-allows-refused-to-everyone"  # see the module docstring
    PROXY_HANDLED = "proxy-handled"


class MariaDBCrashed(RuntimeError):
    """The shared MariaDB stopped answering after a statement: every later test would fail."""


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
    """jitproxy's decision for the person, exactly as the session computes it: the views it names
    are read as their definitions (`view_definitions`, db → name → definition text, as the
    session reads them from information_schema.VIEWS), and a `*` read through column-restricted
    grants is decided on the table's real columns (`table_columns`, read from the server as the
    session reads them from its upstream; a table that does not exist has no columns, as the
    session's lookup answers)."""

    def __init__(
        self,
        grants: tuple[Grant, ...] | list[Grant],
        user: str,
        table_columns: Mapping[TableRef, frozenset[str]] | None = None,
        view_definitions: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.grants = GrantSet(grants, version="differential")
        self.principal = Principal(user=user)
        self.now = datetime.now(timezone.utc)
        self.table_columns = dict(table_columns or {})
        self._views = {db: {name: views.definition_analysis(analyze, db, text) for name, text in found.items()}
                       for db, found in (view_definitions or {}).items()}

    def decide(self, sql: str, db: str | None) -> Decision:
        expanded = views.expand(analyze(sql, db), lambda t: self._views.get(t.db, {}).get(t.table or ""))
        assert not isinstance(expanded, frozenset)  # every database is known (a missing one: no views)
        analysis = expanded
        tables = stars_needing_schema(analysis, self.principal, self.grants, self.now)
        if not tables:
            return decide(analysis, self.principal, self.grants, self.now)
        columns = {t: self.table_columns.get(t, frozenset()) for t in sorted(tables)}
        return decide(analysis, self.principal, self.grants, self.now, table_columns=columns)


class Direct:
    """Statements as the person's own MariaDB account, each on a fresh connection (no session
    state carries over) inside a transaction that is rolled back. A statement that fails for a
    non-privilege reason is run again as `nobody` to tell "rejected before the privilege checks"
    from "failed after them"."""

    def __init__(
        self, mariadb: LocalMariaDB, person: Credentials, nobody: Credentials, upstream: Credentials
    ) -> None:
        self.mariadb, self.person, self.nobody, self.upstream = mariadb, person, nobody, upstream
        self._previous_sql = ""

    def _connect(self, account: Credentials, db: str | None) -> pymysql.Connection:
        return pymysql.connect(
            unix_socket=str(self.mariadb.socket_path),
            user=account.user,
            password=account.password,
            database=db,
            charset="utf8mb4",
            autocommit=False,
            ssl_disabled=True,  # a unix socket; also skips PyMySQL's costly default TLS context
            init_command=f"SET SESSION {SESSION_LIMITS}",
        )

    def _execute(self, account: Credentials, sql: str, db: str | None) -> tuple[int | None, str]:
        """(error code or None, message)."""
        try:
            conn = self._connect(account, db)
        except pymysql.MySQLError as e:  # e.g. 1044: this account may not use `db` at all
            if e.args and e.args[0] in CONNECTION_LOST:
                self._check_alive(self._previous_sql)  # the statement before did it
            return e.args[0], str(e.args[-1])
        result: tuple[int | None, str] = (None, "")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.fetchall()
                while cur.nextset():
                    cur.fetchall()
        except pymysql.MySQLError as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else -1
            if code in CONNECTION_LOST:
                self._check_alive(sql)
            result = (code, str(e.args[-1]) if e.args else repr(e))
        finally:
            self._previous_sql = sql
            quietly(conn.rollback)
            quietly(conn.close)
        if _ACCOUNT_WORDS.search(sql):
            self._restore_accounts()
        return result

    def _restore_accounts(self) -> None:
        with self.mariadb.root_connection(ssl_disabled=True) as conn, conn.cursor() as cur:
            for account in (self.person, self.nobody):
                hashed = native_password_hash(account.password)
                cur.execute("SET PASSWORD FOR %s@'%%' = %s", (account.user, hashed))
                cur.execute("SET DEFAULT ROLE NONE FOR %s@'%%'", (account.user,))

    def _check_alive(self, sql: str) -> None:
        try:
            self.mariadb.execute_root("SELECT 1")
        except pymysql.MySQLError:
            raise MariaDBCrashed(f"MariaDB stopped answering after: {sql!r}") from None

    def run(self, sql: str, db: str | None) -> ServerOutcome:
        try:
            code, message = self._execute(self.person, sql, db)
        except UnicodeEncodeError as e:  # e.g. a lone surrogate: nothing could be sent
            return ServerOutcome(Server.NOT_RUN, None, f"not sendable: {e}")
        if code is None:
            return ServerOutcome(Server.RAN)
        if code in PRIVILEGE_ERRORS:
            return ServerOutcome(Server.DENIED, code, message)
        if code == STATEMENT_TIMEOUT:
            return ServerOutcome(Server.FAILED, code, message)
        nobody_code, _ = self._execute(self.nobody, sql, db)
        if nobody_code == code:
            return ServerOutcome(Server.INVALID, code, message)
        return ServerOutcome(Server.FAILED, code, message)

    def refused_to_everyone(self, sql: str, db: str | None, outcome: ServerOutcome) -> bool:
        """Does the upstream account (ALL on the scratch databases) get the very same table or
        column privilege error about a scratch object? Then the error is not about privileges."""
        if outcome.code == 1142:
            named = _DENIED_TABLE.search(outcome.message)
            if named is None or named.group(1) not in SCRATCH_DATABASES:
                return False
        elif outcome.code != 1143:  # a column error: the upstream holds every column of diff_*
            return False
        code, message = self._execute(self.upstream, sql, db)
        mine = outcome.message.replace(f"'{self.person.user}'", "'?'")
        return code == outcome.code and message.replace(f"'{self.upstream.user}'", "'?'") == mine


def quietly(action: Callable[[], object]) -> None:
    """Roll back / close a connection that may already be gone."""
    try:
        action()
    except (pymysql.MySQLError, OSError):
        pass


def classify(decision: Decision, server: ServerOutcome) -> Verdict:
    if decision.analysis.kind in PROXY_HANDLED:
        return Verdict.PROXY_HANDLED
    if decision.allowed:
        if server.server is Server.REFUSES_EVERYONE:
            return Verdict.ALLOWS_REFUSED_TO_ALL
        if server.server is Server.DENIED:
            return Verdict.LEAK
        if server.server is Server.INVALID:
            return Verdict.ALLOWS_INVALID
        return Verdict.AGREE_ALLOW
    if decision.code in DELIBERATE:
        return Verdict.DELIBERATE
    if server.server is Server.DENIED:
        return Verdict.AGREE_DENY
    if server.server is Server.INVALID:
        return Verdict.BOTH_REFUSE_INVALID
    return Verdict.FALSE_DENIAL


def compare(case: Case, jit: Jit, direct: Direct) -> Result:
    decision = jit.decide(case.sql, case.db)
    if decision.analysis.kind in PROXY_HANDLED:
        server = ServerOutcome(Server.NOT_RUN, None, "answered by the proxy itself")
    else:
        server = direct.run(case.sql, case.db)
        if (
            decision.allowed
            and server.server is Server.DENIED
            and decision.analysis.statement_class in REPLAYABLE_CLASSES
            and direct.refused_to_everyone(case.sql, case.db, server)
        ):
            server = ServerOutcome(Server.REFUSES_EVERYONE, server.code, server.message)
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

    @property
    def working_false_denial_ratio(self) -> float:
        """False denials of statements that ran (not those MariaDB failed on after its privilege
        checks, e.g. an ambiguous column: they would not have worked anyway), over the statements
        that ran."""
        ran = sum(1 for r in self.results.values() if r.server.server is Server.RAN)
        denied = sum(1 for r in self.of(Verdict.FALSE_DENIAL) if r.server.server is Server.RAN)
        return denied / max(ran, 1)

    def summary(self) -> str:
        n = len(self.results)
        fd = len(self.of(Verdict.FALSE_DENIAL))
        deliberate = self.of(Verdict.DELIBERATE)
        deliberate_ran = sum(1 for r in deliberate if r.server.server in (Server.RAN, Server.FAILED))
        invalid = len(self.of(Verdict.BOTH_REFUSE_INVALID)) + len(self.of(Verdict.ALLOWS_INVALID))
        parts = [
            f"differential[{self.label}]: {n} statements",
            f"{len(self.of(Verdict.LEAK))} leaks",
            f"{fd} false denials ({100 * self.false_denial_ratio:.1f}% of {self.mariadb_allowed} MariaDB-allowed; "
            f"{100 * self.working_false_denial_ratio:.1f}% of the statements that ran)",
            f"{len(deliberate)} deliberate denials ({deliberate_ran} of them MariaDB-allowed)",
            f"{len(self.of(Verdict.AGREE_ALLOW))} agree-allow",
            f"{len(self.of(Verdict.AGREE_DENY))} agree-deny",
            f"{invalid} rejected by MariaDB before its privilege checks "
            f"({len(self.of(Verdict.ALLOWS_INVALID))} of them allowed by jitproxy)",
        ]
        if self.of(Verdict.ALLOWS_REFUSED_TO_ALL):
            parts.append(
                f"{len(self.of(Verdict.ALLOWS_REFUSED_TO_ALL))} allowed by jitproxy and refused by MariaDB "
                "to every account"
            )
        if self.of(Verdict.PROXY_HANDLED):
            parts.append(f"{len(self.of(Verdict.PROXY_HANDLED))} answered by the proxy")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return ", ".join(parts)

    def summary_lines(self) -> list[str]:
        """The summary, and the false denials counted by jitproxy's reason code."""
        reasons = Counter(
            r.decision.code.value if r.decision.code else "?" for r in self.of(Verdict.FALSE_DENIAL)
        )
        if not reasons:
            return [self.summary()]
        by_reason = ", ".join(f"{code} {n}" for code, n in reasons.most_common())
        return [self.summary(), f"  false denials by reason: {by_reason}"]

    def report(self, verdict: Verdict, limit: int = 40) -> str:
        found = sorted(self.of(verdict), key=lambda r: r.case.name)
        lines = [r.describe() for r in found[:limit]]
        if len(found) > limit:
            lines.append(f"... and {len(found) - limit} more")
        return "\n".join(lines)

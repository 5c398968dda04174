"""What every part of a client session stands on (`SessionCore`): its state, and the steps of
carrying out a statement's plan that every command shares: analyze the text, plan (decide and
list the effects, protocol/plan.py), refuse (`_deny`), admit (the audit before forwarding),
forward (`_upstream`), apply the effects (`_after`) and close the statement's audit record.

`ProxySession` (session.py) is this plus one part per group of commands, each a class over
`SessionCore` that uses nothing else of the session: login.py (the login), connection_commands.py
(COM_INIT_DB, COM_FIELD_LIST, COM_PING, COM_RESET_CONNECTION...), stmt_commands.py (the binary
protocol), metadata_commands.py and masked.py (statements rewritten before forwarding) and
fastpath.py (the fast path's executor of the same plan)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from proxy.audit.events import SessionInfo
from proxy.authz.model import Analysis, Decision, DenyCode, Principal, StatementKind
from proxy.mysql import wire
from proxy.protocol import errors
from proxy.protocol.deciding import Decider
from proxy.protocol.connection import SAFE_CHARSETS
from proxy.protocol.errors import ER, ClientError, UpstreamLost, max_rows_error
from proxy.protocol.plan import Effect, Plan, effects_of
from proxy.protocol.statement_audit import StatementAudit
from proxy.upstream.connection import UpstreamConnection, UpstreamError
from proxy.upstream.relay import Expect, Outcome, ProtocolViolation

if TYPE_CHECKING:
    from proxy.protocol.connection import ProxyConnection
    from proxy.protocol.stmt_commands import Prepared
    from proxy.upstream.instance import Instance
    from proxy.context import ProxyContext

log = structlog.get_logger("jitproxy.session")


class SessionCore:
    def __init__(self, ctx: ProxyContext, instance: Instance, connection_id: int, peer: str) -> None:
        self.instance = instance
        self.username: str | None = None
        self.database: str | None = None
        self.ctx = ctx
        self.connection_id = connection_id
        self.connection: ProxyConnection | None = None
        self.principal: Principal | None = None
        self.upstream: UpstreamConnection | None = None
        self.prepared: dict[int, Prepared] = {}  # COM_STMT_PREPARE, by statement id
        self.last_prepared: int | None = None  # what statement id 0xFFFFFFFF means (prepared.py)
        self.sql_prepared: dict[str, Analysis] = {}  # PREPARE name FROM '...', by lower-case name
        self.info = SessionInfo(session_id=uuid.uuid4().hex[:16], client_addr=peer, instance=instance.name,
                                environment=instance.environment)
        self.started = time.monotonic()
        self.held_grant = False  # held one at some point (on_expiry: disconnect closes it after)
        # Any statement may name any database of the instance: the strictest mode of them all.
        self.audit = StatementAudit(ctx.audit, ctx.stats, self.info,
                                    ctx.audit.mode_for(*instance.environments.possible), self._audit_context)
        self.decider = Decider(ctx, instance, self.info.session_id)
        self.end_reason: str | None = None
        self._ended = False
        self._fast = None  # the fast path's statement in flight (protocol/fastpath.py)
        self._fast_pending = bytearray()  # commands that arrived while it was in flight
        self._fast_held = False  # reading from the client paused: too much pipelined behind it
        self.address = peer.rsplit(":", 1)[0]  # the client's IP address (limits count by it)
        self.admitted_user: str | None = None  # counted as a session of this person (admission)
        self.token_deadline: datetime | None = None  # identity.on_token_expiry: disconnect
        self.running_since: float | None = None  # monotonic start of the statement on the database
        self.cancelling: str | None = None  # why the proxy cancelled the running statement

    def server_status(self) -> int:
        """The session status bits of the pinned upstream session as it last reported them (the
        upstream server's defaults before one is pinned)."""
        if self.upstream is not None:
            return self.upstream.status & wire.SESSION_STATUS_BITS
        return self.instance.pool.session_status

    async def _send(self, payload: bytes) -> None:
        assert self.connection is not None
        await self.connection.stream.write(payload)

    @property
    def _client_writer(self) -> asyncio.StreamWriter:
        assert self.connection is not None
        return self.connection.stream.writer

    async def _upstream(
        self,
        command: int,
        payload: bytes,
        expect: Expect | None,
        relay: bool = True,
        max_rows: int | None = None,
    ) -> Outcome | None:
        assert self.upstream is not None
        try:
            return await self.upstream.request(
                command,
                payload,
                expect,
                self._client_writer if relay else None,
                row_limit=max_rows,
                limit_error=max_rows_error,
                rewrite_error=self._hide_shared_account,
            )
        except (OSError, ProtocolViolation, asyncio.IncompleteReadError) as e:
            log.warning("upstream lost", error=type(e).__name__, session=self.info.session_id)
            raise UpstreamLost() from None

    def _hide_shared_account(self, payload: bytes) -> bytes | None:
        """An upstream error naming the shared database account ('jitproxy'@'10.0.0.5') names the
        person instead: people never learn the shared identity or where the proxy connects from.
        A statement the proxy cancelled (statement time limit) says so instead of "interrupted"."""
        err = wire.parse_err(payload)
        if self.cancelling == "statement_timeout" and err.code in (ER.QUERY_INTERRUPTED, ER.STATEMENT_TIMEOUT_MARIADB):
            return errors.statement_timeout(self.instance.is_mariadb, self.instance.statement_timeout_s,
                                            self.instance.name)
        pattern = self.instance.shared_account_pattern
        if pattern is None or not pattern.search(err.message):
            return None
        return errors.relabelled(err.code, err.sqlstate, pattern.sub(f"'{self.username or '?'}'", err.message))

    def _deny_error(self, decision: Decision) -> ClientError:
        user = self.username or "?"
        return errors.denied(decision, user, self.ctx.request_hint(user, decision, self.instance.name))

    # -- audit (statement_audit.py: the hooks; here, what the session's state adds) ------------

    @property
    def audit_mode(self) -> str:
        return self.audit.mode

    def _audit_context(self, decision: Decision) -> dict[str, Any]:
        return {"db": self.database,
                "environment": self.instance.environments.of_statement(decision.analysis, self.database)}

    async def _admit(self, command: int, sql: str, decision: Decision, **extra: Any) -> None:
        """Just before an authorized statement is forwarded. fail_closed: `statement.allowed` is
        written durably first, or the statement is refused and never reaches the database.
        best_effort: nothing is written yet; the statement's one event comes when it ends, or
        `statement.allowed` if it is still running after ANNOUNCE_AFTER_S (announce_in_flight)."""
        fields = self._admit_now(command, sql, decision, extra)
        if fields is not None and self.audit.mode == "fail_closed":
            await self.audit.write_admitted(fields)

    def _admit_now(self, command: int, sql: str, decision: Decision, extra: dict[str, Any]) -> dict[str, Any] | None:
        """The part of _admit that needs no waiting (the fast path's)."""
        self.running_since = time.monotonic()
        self.cancelling = None
        return self.audit.on_admitted(command, sql, decision, extra)

    def announce_in_flight(self, now: float) -> None:
        self.audit.announce_long(now)

    def _end_in_flight(self, error: str) -> None:
        """A statement forwarded that never ended normally (the database or the client went
        away, a KILL, a bug)."""
        self.running_since = None
        self.audit.on_lost(error)

    def _audit_statement(self, command: int, sql: str, decision: Decision, started: float,
                         outcome: Outcome | None = None, **extra: Any) -> None:
        """After the statement: denied, or the end of an admitted one with its result."""
        elapsed = time.perf_counter() - started
        if not decision.allowed:
            self.audit.on_denied(command, sql, decision, elapsed, extra)
            return
        self.running_since = None
        self.audit.on_end(decision, elapsed, outcome, self.cancelling, extra)

    async def _deny(self, command: int, sql: str, decision: Decision, started: float, **extra: Any) -> bool:
        self._audit_statement(command, sql, decision, started, **extra)
        raise self._deny_error(decision)

    def _decode(self, payload: bytes) -> str | None:
        assert self.connection is not None
        try:
            return payload.decode(self.connection.client_codec)
        except UnicodeDecodeError:
            return None

    async def _analyze_text(self, payload: bytes) -> tuple[str, Analysis]:
        """Statement bytes → (text for audit, analysis). Bytes that are not valid in the
        connection's character set could be read differently by the server: denied."""
        sql = self._decode(payload)
        if sql is None:
            text = payload.decode("utf-8", "replace")
            return text, Analysis.denied("UNKNOWN", DenyCode.CHARSET, "statement is not valid in the connection's character set")
        return sql, self._on_this_server(await self.ctx.analyze.analyze_async(sql, len(payload), self.database))

    def _on_this_server(self, analysis: Analysis) -> Analysis:
        """MariaDB-only syntax (sequence functions: on MySQL, NEXTVAL(s) would call a stored
        function of that name) is refused unless the upstream is MariaDB."""
        inner = analysis.prepared_analysis
        name = analysis.mariadb_only or (inner.mariadb_only if inner is not None else None)
        if name is None or self.instance.is_mariadb:
            return analysis
        return Analysis.denied(analysis.statement_class, DenyCode.UNSUPPORTED_STATEMENT,
                               f"{name}() is MariaDB's sequence function; instance '{self.instance.name}' is "
                               "not MariaDB (there it would call a stored function of that name)")

    # -- the plan (plan.py) ------------------------------------------------------------------

    def plan(self, analysis: Analysis) -> Plan:
        """The statement's plan as far as it can be made without waiting (plan.py): the fast
        path runs it if it forwards as is; the command loop completes it."""
        analysis = self._on_this_server(analysis)
        if analysis.kind is StatementKind.SQL_EXECUTE:
            analysis = self._sql_prepared_analysis(analysis)
        decision, _ = self.decider.now(analysis)
        return Plan(analysis, decision, effects_of(analysis, decision))

    async def _completed_plan(self, analysis: Analysis) -> Plan:
        """The plan with what the database must say first (views, a table's columns) read."""
        plan = self.plan(analysis)
        if plan.decision is not None:
            return plan
        decision = await self.decider.with_schema(plan.analysis, self.upstream)
        return Plan(plan.analysis, decision, effects_of(plan.analysis, decision))

    def _sql_prepared_analysis(self, execute: Analysis) -> Analysis:
        """EXECUTE name: authorized as the statement PREPARE name authorized (re-decided now)."""
        inner = self.sql_prepared.get(execute.prepared_name or "")
        if inner is None:
            return Analysis.denied(
                "EXECUTE",
                DenyCode.UNKNOWN_PREPARED,
                f"no statement '{execute.prepared_name}' was prepared through jitproxy in this session",
            )
        return inner

    async def _after(self, analysis: Analysis, effects: frozenset[Effect], outcome: Outcome) -> None:
        """The effects a statement has once the database has answered it."""
        prepared_name = analysis.prepared_name
        if outcome.error is not None:
            if analysis.kind is StatementKind.SQL_PREPARE and prepared_name:
                # MySQL drops a statement of that name before preparing the new text, even if that fails
                self.sql_prepared.pop(prepared_name, None)
            return
        if Effect.USE in effects:
            self.database = analysis.use_db
        if Effect.CHARSET in effects:
            await self._sync_charset()
        if Effect.SQL_PREPARED in effects and prepared_name:
            if analysis.kind is StatementKind.SQL_PREPARE and analysis.prepared_analysis is not None:
                self.sql_prepared[prepared_name] = analysis.prepared_analysis
            else:
                self.sql_prepared.pop(prepared_name, None)
        if Effect.SCHEMA in effects:
            self.instance.schema.invalidate()
            self.instance.views.invalidate()

    async def _sync_charset(self) -> None:
        """After SET NAMES / SET character_set_client: decode as the server now does."""
        assert self.upstream is not None and self.connection is not None
        try:
            raw = await self.upstream.query_scalar("SELECT @@character_set_client")
        except (OSError, ProtocolViolation, UpstreamError):
            raise UpstreamLost() from None
        name = (raw or b"").decode("ascii", "replace")
        if name not in SAFE_CHARSETS:  # the analyzer allow-lists charsets: fail closed anyway
            log.error("unexpected client charset upstream", charset=name)
            raise UpstreamLost()
        self.connection.set_client_charset(name)
        self.upstream.charset = name


def not_in_charset(statement_class: str, what: str) -> Analysis:
    return Analysis.denied(statement_class, DenyCode.CHARSET, f"the {what} is not valid in the connection's character set")


def use_analysis(db: str) -> Analysis:
    return Analysis(kind=StatementKind.USE, statement_class="USE", use_db=db, database_access=frozenset({db}))

"""One client session: the person, their pinned upstream connection, and every command.

Each statement is analyzed (cached), decided against the grants in effect *now*, audited, and
only then forwarded: exactly the bytes that were authorized, one statement at a time. The
upstream's answer is relayed to the client unchanged (see upstream/relay.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import structlog
from mysql_mimic.session import BaseSession
from mysql_mimic.variables import GlobalVariables, SessionVariables

from proxy.audit.events import EventType, SessionInfo
from proxy.authz.model import (
    Analysis,
    Decision,
    DenyCode,
    Principal,
    Privilege,
    Requirement,
    StatementKind,
    TableRef,
)
from proxy.identity.personal_tokens import TokenError
from proxy.mysql import wire
from proxy.protocol import errors
from proxy.protocol.deciding import Decider
from proxy.protocol.errors import ER, ClientError, UpstreamLost, max_rows_error
from proxy.protocol.fastpath import FastPathCommands
from proxy.protocol.masked import MaskingCommands
from proxy.protocol.metadata_commands import MetadataCommands
from proxy.protocol.plan import Effect, Plan, effects_of
from proxy.protocol.statement_audit import StatementAudit
from proxy.protocol.stmt_commands import Prepared, PreparedStatementCommands
from proxy.upstream.connection import ClientProfile, UpstreamConnection, UpstreamError
from proxy.upstream.relay import Expect, Outcome, ProtocolViolation

if TYPE_CHECKING:
    from proxy.protocol.connection import ProxyConnection
    from proxy.upstream.instance import Instance
    from proxy.context import ProxyContext

log = structlog.get_logger("jitproxy.session")







class ProxySession(FastPathCommands, PreparedStatementCommands, MetadataCommands, MaskingCommands, BaseSession):
    def __init__(self, ctx: ProxyContext, instance: Instance, connection_id: int, peer: str) -> None:
        self.variables = SessionVariables(GlobalVariables())
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

    # -- lifecycle -------------------------------------------------------------------------

    def set_client_info(self, username: str, attrs: dict[str, str]) -> None:
        self.info.user = username  # claimed, until the token proves it
        self.info.client_program = attrs.get("program_name")
        self.info.client_name = attrs.get("_client_name")

    async def rejected(self, code: str, reason: str, **extra: Any) -> None:
        self.ctx.stats.login(code)
        self.ctx.audit.emit(EventType.SESSION_REJECTED, self.info, reason_code=code, reason=reason, **extra)
        self._ended = True

    async def login(
        self, username: str, token: bytes, database: str | None, collation_id: int
    ) -> ClientError | None:
        """Verify the token, check the initial database, pin an upstream connection.
        Returns the error to send instead of OK, or None when the session is ready."""
        denied = ClientError(
            ER.ACCESS_DENIED,
            f"Access denied for user '{username[:80]}': invalid or expired token",
            keep_connection=False,
        )
        admission = self.ctx.admission
        locked = admission.locked(self.address, username)
        if locked is not None:
            await self.rejected(locked.code, locked.error.message)
            return locked.error
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            await self._login_failed(username, "malformed", "token is not UTF-8")
            return denied
        try:
            principal = await self.ctx.verifier.verify_async(username, text, instance=self.instance.name,
                                                             address=self.address)
        except TokenError as e:
            await self._login_failed(username, e.code, "token rejected")
            if e.code == "truncated":  # says what to do instead; tells nothing about any token
                return ClientError(ER.ACCESS_DENIED, e.public_message, keep_connection=False)
            return denied
        finally:
            del text
        admission.succeeded(self.address, username)
        refusal = admission.login(self.address, principal.user)
        if refusal is not None:
            log.warning("connection refused", reason=refusal.code, user=principal.user, peer=self.info.client_addr)
            await self.rejected(refusal.code, refusal.error.message)
            return refusal.error
        self.admitted_user = principal.user
        if self.ctx.on_token_expiry == "disconnect" and principal.token_expires_at is not None:
            self.token_deadline = principal.token_expires_at + self.ctx.token_leeway
        self.principal = principal
        self.decider.principal = principal
        self.username = principal.user
        self.info.user = principal.user
        self.info.groups = principal.groups
        self.info.token_id = principal.token_id

        if database:
            decision = self.decider.decide(_use_analysis(database))
            if not decision.allowed:
                await self.rejected(decision.code.value if decision.code else "denied", decision.reason)
                return self._deny_error(decision)

        assert self.connection is not None
        caps = self.connection.capabilities
        profile = ClientProfile(
            deprecate_eof=bool(caps & (1 << 24)),
            found_rows=bool(caps & 2),
            multi_results=bool(caps & (1 << 17)),
            ps_multi_results=bool(caps & (1 << 18)),
        )
        try:
            self.upstream = await self.instance.pool.acquire(profile, database or None)
            charset = self.connection.client_charset_name
            if charset != self.upstream.charset:
                await self.upstream.execute(f"SET NAMES {charset}")
                self.upstream.charset = charset
        except UpstreamError as e:
            if e.kind == "exhausted":  # logged by the pool
                await self.rejected("upstream_pool_exhausted", e.public)
                return ClientError(ER.TOO_MANY_CONNECTIONS, f"jitproxy: {e.public}", keep_connection=False)
            log.warning("upstream unavailable at login", detail=e.detail, instance=self.instance.name)
            code = "upstream_not_responding" if e.kind == "not_responding" else "upstream_unavailable"
            await self.rejected(code, e.public)
            return ClientError(ER.UPSTREAM_UNAVAILABLE, f"jitproxy: {e.public}", keep_connection=False)
        except (OSError, ProtocolViolation, asyncio.TimeoutError) as e:
            log.warning("upstream failed at login", error=type(e).__name__)
            await self.rejected("upstream_unavailable", "upstream failed")
            return ClientError(ER.UPSTREAM_UNAVAILABLE, "jitproxy: the database is unavailable", keep_connection=False)
        self.database = database or None
        self.held_grant = bool(self.decider.grants().for_principal(principal, self.ctx.now()))
        self.ctx.sessions[self.connection_id] = self
        self.ctx.stats.login("ok")
        self.ctx.audit.emit(
            EventType.SESSION_START,
            self.info,
            db=self.database,
            connection_id=self.connection_id,
            upstream_thread_id=self.upstream.thread_id,
            token_expires_at=principal.token_expires_at,
            # a short session password stands for a token (proxy.identity.session_passwords): which one
            **({"session_password": principal.token_id} if (principal.token_id or "").startswith("sp-") else {}),
        )
        return None

    async def _login_failed(self, username: str, code: str, reason: str) -> None:
        """A token that did not verify: counted per address and per person at the address; past
        `free` failures the answer waits (backoff), past `lockout_after` both lock for a while."""
        delay, locked_now = self.ctx.admission.failed(self.address, username)
        extra: dict[str, Any] = {}
        if locked_now:
            log.warning("failed logins: lockout", peer=self.info.client_addr, user=username[:80])
            extra["lockout"] = True
        elif delay:
            extra["backoff_s"] = round(delay, 3)
        await self.rejected(code, reason, **extra)
        if delay:
            await asyncio.sleep(delay)

    async def close(self) -> None:
        self.abort_fast()
        self.ctx.sessions.pop(self.connection_id, None)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if upstream.busy:  # left mid-statement: it may still run (and hold locks) upstream
                self.ctx.cancel_upstream(self.instance, upstream.thread_id, connection=True, port=upstream.local_port)
            self.instance.pool.release(upstream, reusable=not upstream.broken and not upstream.busy)
        if not self._ended and self.principal is not None:
            self._ended = True
            self.ctx.stats.session_end(self.end_reason or "closed")
            self.ctx.audit.emit(
                EventType.SESSION_END,
                self.info,
                statements=self.audit.statements,
                denied=self.audit.denied,
                duration_ms=round((time.monotonic() - self.started) * 1000, 3),
                **({"reason": self.end_reason} if self.end_reason else {}),
            )

    def server_status(self) -> int:
        """The session status bits of the pinned upstream session as it last reported them (the
        upstream server's defaults before one is pinned)."""
        if self.upstream is not None:
            return self.upstream.status & wire.SESSION_STATUS_BITS
        return self.instance.pool.session_status

    # -- dispatch --------------------------------------------------------------------------

    async def dispatch(self, command: int, payload: bytes) -> bool:
        """Handle one client command. Returns False when the connection must close."""
        if self.token_deadline is not None and self.ctx.now() >= self.token_deadline:
            return self._token_expired(command, payload)
        handler = _HANDLERS.get(command)
        if handler is None:
            name = wire.COMMAND_NAMES.get(command, f"0x{command:02x}")
            raise ClientError(ER.UNKNOWN_COM, f"jitproxy does not support {name}")
        try:
            return await handler(self, payload)
        except UpstreamLost:
            # The database went away under us (a failover, a restart): the idle connections to
            # the same endpoint are stale too.
            self._end_in_flight("lost connection to the database during the statement")
            await self.instance.pool.drop_idle()
            await self._send(errors.packet(errors.UPSTREAM_LOST))
            return False
        finally:
            if self.audit.in_flight:  # the client left, a KILL, or a bug mid-statement
                self._end_in_flight("the statement was interrupted (client disconnected, killed or failed in jitproxy)")

    def _token_expired(self, command: int, payload: bytes) -> bool:
        """The first command after the token's end (+ leeway): refused, audited, session closed."""
        assert self.principal is not None and self.principal.token_expires_at is not None
        ended = self.principal.token_expires_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if command in (wire.COM_QUERY, wire.COM_STMT_PREPARE):
            self.ctx.stats.statement("deny", "denied", "token_expired", None)
            self.audit.statements += 1
            self.audit.denied += 1
            self.ctx.audit.emit(EventType.STATEMENT_DENIED, self.info,
                                command=wire.COMMAND_NAMES.get(command, str(command)),
                                statement=payload.decode("utf-8", "replace"), db=self.database, decision="deny",
                                reason_code="token_expired", reason=f"the token ended at {ended}")
        self.end_reason = "token_expired"
        log.info("session ended: token expired", session=self.info.session_id, user=self.username)
        raise ClientError(
            ER.ACCESS_DENIED,
            f"Access denied for user '{self.username}': your jitproxy token expired at {ended}, so this "
            "connection was closed (identity.on_token_expiry). Get a new token (jitproxy login, or ask for "
            "`jitproxy token issue`) and reconnect.",
            keep_connection=False,
        )

    def check_statement_time(self, now: float) -> None:
        """Past the instance's statement_timeout_s: cancel the statement upstream (KILL QUERY on a
        side connection); its error then says why (see _hide_shared_account). Called by the
        server's housekeeping for sessions with a command running."""
        limit = self.instance.statement_timeout_s
        since = self.running_since
        up = self.upstream
        if (limit is None or since is None or self.cancelling is not None or up is None or not up.busy
                or now - since < limit):
            return
        self.cancelling = "statement_timeout"
        log.warning("statement time limit reached: cancelling it", session=self.info.session_id,
                    user=self.username, instance=self.instance.name, limit_s=limit, thread_id=up.thread_id)
        self.ctx.cancel_upstream(self.instance, up.thread_id, connection=False, port=up.local_port)

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

    # -- COM_QUERY -------------------------------------------------------------------------

    async def com_query(self, payload: bytes) -> bool:
        """The command loop's executor of a query's plan (plan.py): complete it, then carry out
        its decision and effects."""
        started = time.perf_counter()
        sql, analysis = await self._analyze_text(payload)
        kind = analysis.kind  # (EXECUTE name: the plan's analysis is the statement it runs)
        plan = await self._completed_plan(analysis)
        decision, effects = plan.decision, plan.effects
        analysis = plan.analysis
        assert decision is not None
        if not decision.allowed:
            return await self._deny(wire.COM_QUERY, sql, decision, started)
        if Effect.KILL in effects:
            await self._admit(wire.COM_QUERY, sql, decision)
            return await self._kill(sql, decision, started)
        if Effect.MASKS in effects:
            payload, denied = await self._masked_payload(sql, kind, decision)
            if denied is not None:
                return await self._deny(wire.COM_QUERY, sql, denied, started)
        elif Effect.METADATA in effects:
            payload, denied = self._restrict_metadata(sql, analysis)
            if denied is not None:
                return await self._deny(wire.COM_QUERY, sql, denied, started)
        elif Effect.REWRITTEN in effects:  # CREATE VIEW made SQL SECURITY INVOKER (authz/views.py)
            assert self.connection is not None and analysis.rewritten is not None
            payload = analysis.rewritten.encode(self.connection.client_codec)

        await self._admit(wire.COM_QUERY, sql, decision)
        if Effect.FILTERED_SHOW in effects:
            outcome = await self._filtered_show(payload, analysis)
        elif Effect.LISTED_COLUMNS in effects:  # also EXECUTE of a PREPAREd DESCRIBE
            outcome = await self._listed_columns(payload, decision)
        else:
            outcome = await self._upstream(wire.COM_QUERY, payload, Expect.RESULT, max_rows=decision.max_rows)
        assert outcome is not None
        await self._after(analysis, effects, outcome)
        self._audit_statement(wire.COM_QUERY, sql, decision, started, outcome)
        return True

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

    async def _sync_charset(self) -> None:
        """After SET NAMES / SET character_set_client: decode as the server now does."""
        assert self.upstream is not None and self.connection is not None
        try:
            raw = await self.upstream.query_scalar("SELECT @@character_set_client")
        except (OSError, ProtocolViolation, UpstreamError):
            raise UpstreamLost() from None
        name = (raw or b"").decode("ascii", "replace")
        from proxy.protocol.connection import SAFE_CHARSETS

        if name not in SAFE_CHARSETS:  # the analyzer allow-lists charsets: fail closed anyway
            log.error("unexpected client charset upstream", charset=name)
            raise UpstreamLost()
        self.connection.set_client_charset(name)
        self.upstream.charset = name

    async def _kill(self, sql: str, decision: Decision, started: float) -> bool:
        analysis = decision.analysis
        target_id = analysis.kill_target
        target = self.ctx.sessions.get(target_id) if target_id is not None else None
        if target is None or target.principal is None:
            self._audit_statement(wire.COM_QUERY, sql, decision, started, kill="no_such_thread")
            raise ClientError(ER.NO_SUCH_THREAD, f"Unknown thread id: {target_id}")
        if self.principal is None or target.principal.user != self.principal.user:
            self._audit_statement(wire.COM_QUERY, sql, decision, started, kill="not_owner")
            raise ClientError(ER.KILL_DENIED, f"You are not owner of thread {target_id}")
        if analysis.kill_query_only:
            if target.upstream is not None:
                await target.instance.kill_query(target.upstream.thread_id)
        elif target is self:
            self._audit_statement(wire.COM_QUERY, sql, decision, started, kill="connection")
            raise ClientError(ER.CONNECTION_KILLED, "Connection was killed", keep_connection=False)
        elif target.connection is not None:
            target.connection.kill()
        self._audit_statement(wire.COM_QUERY, sql, decision, started, kill="query" if analysis.kill_query_only else "connection")
        await self._send(self.connection.ok() if self.connection else b"")
        return True

    # -- other commands --------------------------------------------------------------------

    async def com_init_db(self, payload: bytes) -> bool:
        started = time.perf_counter()
        db = self._decode(payload)
        if db is None:  # the server could read these bytes as another name: refused, as in COM_QUERY
            return await self._deny(wire.COM_INIT_DB, f"USE `{payload.decode('utf-8', 'replace')}`",
                                    self.decider.decide(_not_in_charset("USE", "database name")), started)
        decision = self.decider.decide(_use_analysis(db))
        if not decision.allowed:
            return await self._deny(wire.COM_INIT_DB, f"USE `{db}`", decision, started)
        await self._admit(wire.COM_INIT_DB, f"USE `{db}`", decision)
        outcome = await self._upstream(wire.COM_INIT_DB, payload, Expect.OK)
        assert outcome is not None
        if outcome.error is None:
            self.database = db
            assert self.upstream is not None
            self.upstream.database = db
        self._audit_statement(wire.COM_INIT_DB, f"USE `{db}`", decision, started, outcome)
        return True

    async def com_field_list(self, payload: bytes) -> bool:
        started = time.perf_counter()
        raw = payload.split(b"\x00", 1)[0]
        table = self._decode(raw)
        if table is None:
            return await self._deny(wire.COM_FIELD_LIST, f"SHOW COLUMNS FROM `{raw.decode('utf-8', 'replace')}`",
                                    self.decider.decide(_not_in_charset("FIELD LIST", "table name")), started)
        if self.database is None:
            analysis = Analysis.denied("FIELD LIST", DenyCode.NO_DATABASE, "no database selected")
        else:
            analysis = Analysis(
                kind=StatementKind.SHOW,
                statement_class="FIELD LIST",
                requirements=frozenset({Requirement(TableRef(self.database, table), Privilege.SELECT)}),
            )
        decision = self.decider.decide(analysis)
        sql = f"SHOW COLUMNS FROM `{table}`"
        if not decision.allowed:
            return await self._deny(wire.COM_FIELD_LIST, sql, decision, started)
        await self._admit(wire.COM_FIELD_LIST, sql, decision)
        outcome = await self._upstream(wire.COM_FIELD_LIST, payload, Expect.FIELDS)
        self._audit_statement(wire.COM_FIELD_LIST, sql, decision, started, outcome)
        return True

    async def com_ping(self, payload: bytes) -> bool:
        await self._upstream(wire.COM_PING, b"", Expect.OK)
        return True

    async def com_reset_connection(self, payload: bytes) -> bool:
        assert self.upstream is not None
        try:
            await self.upstream.reset()
            raw = await self.upstream.query_scalar("SELECT DATABASE()")
        except (OSError, ProtocolViolation, UpstreamError, asyncio.IncompleteReadError):
            raise UpstreamLost() from None
        self.prepared.clear()
        self.last_prepared = None
        self.sql_prepared.clear()
        self.database = raw.decode("utf-8") if raw is not None else None
        self.upstream.database = self.database
        assert self.connection is not None
        if self.connection.client_charset_name != self.upstream.charset:
            await self.upstream.execute(f"SET NAMES {self.connection.client_charset_name}")
            self.upstream.charset = self.connection.client_charset_name
        await self._send(self.connection.ok())
        return True

    async def com_change_user(self, payload: bytes) -> bool:
        # Re-authentication inside a session is refused: a person reconnects instead. (mysql-mimic
        # also reads the auth data with a 1-byte length, which breaks tokens over 255 bytes.)
        raise ClientError(
            ER.NOT_SUPPORTED,
            "jitproxy does not support COM_CHANGE_USER: open a new connection as the other user",
            keep_connection=False,
        )

    async def com_set_option(self, payload: bytes) -> bool:
        raise ClientError(ER.NOT_SUPPORTED, "jitproxy does not support COM_SET_OPTION (multi-statements stay off)")

    # -- mysql-mimic BaseSession interface (our connection dispatches directly) ------------

    async def handle_query(self, sql: str, attrs: dict[str, str]) -> Any:  # pragma: no cover
        raise ClientError(ER.INTERNAL, "not used")

    async def use(self, database: str) -> None:  # pragma: no cover
        raise ClientError(ER.INTERNAL, "not used")


def _not_in_charset(statement_class: str, what: str) -> Analysis:
    return Analysis.denied(statement_class, DenyCode.CHARSET, f"the {what} is not valid in the connection's character set")


def _use_analysis(db: str) -> Analysis:
    return Analysis(kind=StatementKind.USE, statement_class="USE", use_db=db, database_access=frozenset({db}))




_HANDLERS = {
    wire.COM_QUERY: ProxySession.com_query,
    wire.COM_INIT_DB: ProxySession.com_init_db,
    wire.COM_FIELD_LIST: ProxySession.com_field_list,
    wire.COM_PING: ProxySession.com_ping,
    wire.COM_RESET_CONNECTION: ProxySession.com_reset_connection,
    wire.COM_CHANGE_USER: ProxySession.com_change_user,
    wire.COM_SET_OPTION: ProxySession.com_set_option,
    wire.COM_STMT_PREPARE: ProxySession.com_stmt_prepare,
    wire.COM_STMT_EXECUTE: ProxySession.com_stmt_execute,
    wire.COM_STMT_FETCH: ProxySession.com_stmt_fetch,
    wire.COM_STMT_SEND_LONG_DATA: ProxySession.com_stmt_send_long_data,
    wire.COM_STMT_CLOSE: ProxySession.com_stmt_close,
    wire.COM_STMT_RESET: ProxySession.com_stmt_reset,
}

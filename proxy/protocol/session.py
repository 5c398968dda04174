"""One client session: the person, their pinned upstream connection, and every command.

Each statement is analyzed (cached), decided against the grants in effect *now*, audited, and
only then forwarded: exactly the bytes that were authorized, one statement at a time. The
upstream's answer is relayed to the client unchanged (see upstream/relay.py).

The session is `SessionCore` (core.py: its state and the steps every command shares) and one
part per group of commands; here: its end, the dispatch of commands, and COM_QUERY."""

from __future__ import annotations

import time

import structlog

from proxy.audit.events import EventType
from proxy.authz.model import Decision
from proxy.mysql import wire
from proxy.protocol import errors
from proxy.protocol.connection_commands import ConnectionCommands
from proxy.protocol.errors import ER, ClientError, UpstreamLost
from proxy.protocol.fastpath import FastPathCommands
from proxy.protocol.login import SessionLogin
from proxy.protocol.masked import MaskingCommands
from proxy.protocol.metadata_commands import MetadataCommands
from proxy.protocol.plan import Effect
from proxy.protocol.stmt_commands import PreparedStatementCommands
from proxy.upstream.relay import Expect

log = structlog.get_logger("jitproxy.session")


class ProxySession(SessionLogin, FastPathCommands, PreparedStatementCommands, MetadataCommands, MaskingCommands,
                   ConnectionCommands):
    # -- lifecycle -------------------------------------------------------------------------

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

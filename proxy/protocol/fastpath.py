"""The fast path: a plain statement handled inside the socket callbacks, without a task switch.

The command loop (connection.py) costs two task wake-ups per statement (the client's command
arrives; the upstream's answer does) plus the stream buffers around them. So when a client's
command arrives while its session is idle, `client_data` handles it right there: the same
analysis cache, the same decision (remembered, or made now when it needs nothing from the
database), the same audit fields; the packet goes upstream as received. The answer is relayed by
`upstream_data`, called from the upstream socket's callback, through the same `Relay` as the
command loop's (max_rows cut, error rewrite, back-pressure: a full client transport pauses
reading from the database), and the statement's closing event is emitted once its last packet
has gone to the client. Commands pipelined behind it wait for its answer.

The statement's plan is the command loop's (plan.py, `SessionCore.plan` in core.py): the fast path runs it
only when it forwards as is (allowed, complete, no effects). It declines (the bytes go to the
command loop, which runs the same plan) whenever anything would need waiting or more than a
forward: a plan that needs the database first (view definitions, a table's columns), denies or
has effects (USE, SET NAMES, PREPARE, KILL, DDL, masks, filtered rows, rewrites...); and for its
own reasons as an executor: a partial or oversized packet (or one the analyzer takes off the
loop), a command other than COM_QUERY / COM_STMT_EXECUTE, an audit mode that must write before
forwarding (fail_closed), an upstream connection with unread bytes. `listen.fast_path: false`
turns it off.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from proxy.authz.model import Decision
from proxy.protocol import errors
from proxy.mysql import wire
from proxy.protocol.core import SessionCore
from proxy.protocol.errors import max_rows_error
from proxy.protocol.stmt_commands import STMT_HEADER_BYTES
from proxy.mysql.transport import intercept
from proxy.upstream.relay import Expect, ProtocolViolation, Relay

if TYPE_CHECKING:
    from proxy.protocol.stmt_commands import Prepared

log = structlog.get_logger("jitproxy.fastpath")

_BACKGROUND: set[asyncio.Task[None]] = set()  # drop_idle tasks started from callbacks
PENDING_LIMIT = 1 << 20  # bytes of pipelined commands held while a statement is in flight


class _InFlight:
    """A statement on the fast path, from its forward to its response's last packet."""

    __slots__ = ("command", "sql", "decision", "started", "relay", "end_extra", "stmt", "paused")

    def __init__(self, command: int, sql: str, decision: Decision, started: float, relay: Relay,
                 end_extra: dict[str, Any], stmt: Prepared | None) -> None:
        self.command = command
        self.sql = sql
        self.decision = decision
        self.started = started
        self.relay = relay
        self.end_extra = end_extra
        self.stmt = stmt
        self.paused = False  # upstream reading paused: the client's transport is full


class FastPathCommands(SessionCore):
    """The fast path, a part of ProxySession over SessionCore (core.py: the plan, audit and relay steps it uses)."""

    _fast: _InFlight | None  # all three set in SessionCore.__init__
    _fast_pending: bytearray
    _fast_held: bool

    def enable_fast_path(self) -> None:
        """After login: route the client's bytes through `client_data`."""
        if not self.ctx.fast_path or self.audit_mode == "fail_closed":
            return
        protocol = intercept(self.connection.stream.writer)
        if protocol is not None:
            protocol.interceptor = self.client_data
            protocol.on_writable = self._client_writable

    # -- client side -----------------------------------------------------------------------

    def client_data(self, data: bytes) -> bool:
        """The client's bytes: True when handled here (or held while a statement is in flight),
        False to hand them to the command loop."""
        if self._fast is not None:  # a pipelined command: it waits for the statement in flight
            self._fast_pending += data
            if not self._fast_held and len(self._fast_pending) > PENDING_LIMIT:
                # A client pipelining more than this behind an answer it does not read: stop
                # reading from it (TCP pushes back) until the answer is through.
                self._fast_held = True
                self.connection.stream.writer.transport.pause_reading()
            return True
        try:
            return self._try_fast(data)
        except Exception:  # noqa: BLE001 - a bug here must not lose the command: the loop takes it
            log.exception("fast path failed; handled by the command loop", session=self.info.session_id)
            if self._fast is not None:  # already forwarded: the statement cannot be taken back
                self._fast_lost("the statement failed in jitproxy")
                return True
            return False

    def _try_fast(self, data: bytes) -> bool:
        conn = self.connection
        n = len(data)
        if (n < 5 or data[3] != 0 or not conn.idle or conn.stopping or conn.killed
                or conn.stream.reader._buffer  # noqa: SLF001 - part of a packet is waiting there
                or conn.stream.reading  # these bytes are the body of a packet the loop is reading
                or (self.token_deadline is not None and self.ctx.now() >= self.token_deadline)):
            return False  # (an expired token ends the session: the command loop says so)
        length = data[0] | (data[1] << 8) | (data[2] << 16)
        if length + 4 > n or length >= wire.MAX_PAYLOAD or length > conn.stream.max_packet_bytes:
            return False
        packet = data if length + 4 == n else data[: length + 4]
        command = data[4]
        if command == wire.COM_QUERY:
            handled = self._fast_query(packet)
        elif command == wire.COM_STMT_EXECUTE:
            handled = self._fast_execute(packet)
        else:
            return False
        if handled and packet is not data:  # pipelined commands wait for this one's answer
            self._fast_pending += memoryview(data)[length + 4 :]
        return handled

    def _usable_upstream(self) -> bool:
        up = self.upstream
        return (up is not None and not up.broken and up.protocol is not None
                and not up.reader._buffer and not up.closed)  # noqa: SLF001 - no unread bytes

    def _fast_query(self, data: bytes) -> bool:
        started = time.perf_counter()
        analyze = self.ctx.analyze
        if (not self._usable_upstream() or len(data) - 5 > analyze.thread_offload_bytes
                or len(data) - 5 > analyze.max_statement_bytes):  # the loop denies it, or parses it off-loop
            return False
        try:
            sql = str(memoryview(data)[5:], self.connection.client_codec)
        except UnicodeDecodeError:
            return False
        plan = self.plan(analyze(sql, self.database))
        if not plan.forwards_as_is:  # it needs the database first, has effects, or is denied
            return False
        assert plan.decision is not None
        self._forward(wire.COM_QUERY, data, sql, plan.decision, started, {}, {}, None)
        return True

    def _fast_execute(self, data: bytes) -> bool:
        started = time.perf_counter()
        if len(data) < 5 + STMT_HEADER_BYTES[wire.COM_STMT_EXECUTE] or not self._usable_upstream():
            return False  # (a short one: the command loop answers it as malformed)
        stmt_id = int.from_bytes(data[5:9], "little")
        stmt = self.prepared.get(stmt_id)
        if stmt is None:
            return False
        plan = self.execute_plan(stmt)
        if plan.decision is None or not plan.decision.allowed:  # (an allowed execute has no effects)
            return False
        decision = plan.decision
        params = self._params(data[5:], stmt)
        self._forward(wire.COM_STMT_EXECUTE, data, stmt.sql, decision, started,
                      {"stmt_id": stmt_id, **params}, {"stmt_id": stmt_id}, stmt)
        return True

    def _forward(self, command: int, packet: bytes, sql: str, decision: Decision, started: float,
                 admit_extra: dict[str, Any], end_extra: dict[str, Any], stmt: Prepared | None) -> None:
        """Admit the statement (audit fields held; best_effort/off only), send the client's packet
        upstream as received and relay the answer from the upstream's callbacks."""
        up = self.upstream
        self._admit_now(command, sql, decision, admit_extra)
        relay = Relay(Expect.RESULT, up.profile.deprecate_eof, True, decision.max_rows,
                      max_rows_error, self._hide_shared_account)
        self._fast = _InFlight(command, sql, decision, started, relay, end_extra, stmt)
        self.connection.idle = False
        protocol = up.protocol
        protocol.interceptor = self.upstream_data
        protocol.on_lost = self._upstream_gone
        self.ctx.fast_statements += 1
        up.busy = True
        up.writer.transport.write(packet)

    # -- upstream side ---------------------------------------------------------------------

    def upstream_data(self, chunk: bytes) -> bool:
        fast = self._fast
        if fast is None:
            return False
        try:
            out = fast.relay.feed(chunk)
            if out:
                self.connection.stream.writer.transport.write(out)
            if fast.relay.done:
                self._fast_done(fast)
        except ProtocolViolation as e:
            log.warning("upstream protocol violation", error=str(e), session=self.info.session_id)
            self._fast_lost("lost connection to the database during the statement")
        except Exception:  # noqa: BLE001 - a bug mid-answer: this session cannot go on, the process can
            log.exception("fast path failed mid-answer", session=self.info.session_id)
            self._fast_lost("the statement failed in jitproxy")
        return True

    def _upstream_gone(self) -> None:
        if self._fast is not None:
            log.warning("upstream lost", error="connection closed", session=self.info.session_id)
            self._fast_lost("lost connection to the database during the statement")

    def _client_writable(self, writable: bool) -> None:
        """Back-pressure: a full client transport pauses reading from the upstream."""
        fast = self._fast
        if fast is None or self.upstream is None:
            return
        transport = self.upstream.writer.transport
        if writable and fast.paused:
            fast.paused = False
            transport.resume_reading()
        elif not writable and not fast.paused:
            fast.paused = True
            transport.pause_reading()

    def _detach(self, fast: _InFlight) -> None:
        self._fast = None
        up = self.upstream
        if up is not None and up.protocol is not None:
            up.protocol.interceptor = None
            up.protocol.on_lost = None
            if fast.paused:
                up.writer.transport.resume_reading()

    def _fast_done(self, fast: _InFlight) -> None:
        self._detach(fast)
        outcome = fast.relay.outcome
        up = self.upstream
        up.note(outcome)
        if fast.stmt is not None:
            fast.stmt.rows_sent = outcome.rows
        self._audit_statement(fast.command, fast.sql, fast.decision, fast.started, outcome, **fast.end_extra)
        conn = self.connection
        conn.idle = True
        conn.idle_since = time.monotonic()
        if conn.stopping:  # the server is stopping or the person's access ended: close now
            conn.abort()
            return
        if self._fast_held:
            self._fast_held = False
            conn.stream.writer.transport.resume_reading()
        if self._fast_pending:
            data = bytes(self._fast_pending)
            self._fast_pending.clear()
            if not self.client_data(data):
                conn.stream.reader.feed_data(data)

    def _fast_lost(self, error: str) -> None:
        """The upstream went away (or spoke nonsense) mid-statement: the statement ends as failed,
        the client is told and the session closes, as in the command loop."""
        fast = self._fast
        if fast is None:
            return
        self._detach(fast)
        up = self.upstream
        if up is not None:
            up.broken = True
        self._end_in_flight(error)
        task = asyncio.get_running_loop().create_task(self.instance.pool.drop_idle())
        _BACKGROUND.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_BACKGROUND.discard)
        self.connection.stream.writer.transport.write(wire.frame(errors.packet(errors.UPSTREAM_LOST), 1))
        self.connection.abort()

    def abort_fast(self) -> None:
        """The session ends (client gone, KILL, shutdown) with a statement in flight: the upstream
        connection is mid-response (never reused) and the statement ends as failed."""
        fast = self._fast
        if fast is None:
            return
        self._detach(fast)
        if self.upstream is not None:
            self.upstream.broken = True
        self._end_in_flight("the statement was interrupted (client disconnected, killed or failed in jitproxy)")


"""Typed audit events and the emitter every component writes through.

Audit is not logging: each event has a `type` and a stable `code`, names the real person, and
never carries a token, password or IAM signature. Sinks receive one JSON object per event."""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import hashlib
import itertools
import json
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import structlog

from proxy.audit.chain import GENESIS, canonical, seal
from proxy.authz.fingerprint import fingerprint, normalize
from proxy.audit.sinks import FileSink, MemorySink, Record, Sink, SinkWriter, StreamSink
from proxy.environments import PROD

log = structlog.get_logger("jitproxy.audit")

SCHEMA_VERSION = 1
# Who is calling, for events made outside a client session (the admin API sets it per request;
# asyncio.to_thread carries it into the worker thread that emits).
CALLER: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("audit_caller", default=None)
# On every event (null where it does not apply): the schema's common fields.
_COMMON = ("session_id", "user", "groups", "client_addr", "client_program", "instance", "environment")
__all__ = ["AuditEmitter", "AuditUnavailable", "EventType", "FileSink", "MemorySink", "SessionInfo", "Sink",
           "StreamSink"]


class EventType:
    SESSION_START = "session.start"
    SESSION_REJECTED = "session.rejected"
    SESSION_END = "session.end"
    STATEMENT_ALLOWED = "statement.allowed"  # authorized; written before it is forwarded
    STATEMENT_COMPLETED = "statement.completed"  # its result: rows, affected rows, duration
    STATEMENT_FAILED = "statement.failed"  # the database (or a guardrail) answered with an error
    STATEMENT_DENIED = "statement.denied"
    REQUEST_CREATED = "request.created"
    REQUEST_APPROVAL = "request.approval"  # one approver's approval, before the request is approved
    REQUEST_APPROVED = "request.approved"
    REQUEST_DENIED = "request.denied"
    REQUEST_CANCELLED = "request.cancelled"
    REQUEST_EXPIRED = "request.expired"
    REQUEST_REVOKED = "request.revoked"  # an admin ended its access early
    REQUEST_RELEASED = "request.released"  # the requester gave its access back early
    REQUEST_BREAK_GLASS = "request.break_glass"  # an on-call person's request, approved at once (review pending)
    REQUEST_REVIEWED = "request.reviewed"  # a break-glass request reviewed after the fact (denied: revoked)
    GRANT_ADDED = "grant.added"
    GRANT_REVOKED = "grant.revoked"
    GRANT_RELEASED = "grant.released"  # the person holding it gave it back early
    GRANT_BREAK_GLASS = "grant.break_glass"  # an admin's grant beyond its environment's maximum
    POLICY_RELOADED = "policy.reloaded"
    POLICY_RELOAD_FAILED = "policy.reload_failed"
    ADMIN_API_CALL = "admin.api_call"
    IDENTITY_SIGNED_IN = "identity.signed_in"  # the IdP vouched for a person; jitproxy issued a token
    SESSION_PASSWORD_ISSUED = "session_password.issued"
    SESSION_PASSWORD_REVOKED = "session_password.revoked"
    # The trail's own: written by the emitter, never by a component (see docs/audit.md).
    AUDIT_CHECKPOINT = "audit.checkpoint"  # every event before it is written (and synced)
    AUDIT_SEALED = "audit.sealed"  # the last event of a chain segment: the emitter closed cleanly


CODES = {
    EventType.SESSION_START: "JP1000",
    EventType.SESSION_REJECTED: "JP1001",
    EventType.SESSION_END: "JP1002",
    EventType.STATEMENT_ALLOWED: "JP2000",
    EventType.STATEMENT_FAILED: "JP2001",
    EventType.STATEMENT_DENIED: "JP2002",
    EventType.STATEMENT_COMPLETED: "JP2003",
    EventType.REQUEST_CREATED: "JP3000",
    EventType.REQUEST_APPROVAL: "JP3001",
    EventType.REQUEST_APPROVED: "JP3002",
    EventType.REQUEST_DENIED: "JP3003",
    EventType.REQUEST_CANCELLED: "JP3004",
    EventType.REQUEST_EXPIRED: "JP3005",
    EventType.REQUEST_REVOKED: "JP3006",
    EventType.REQUEST_RELEASED: "JP3007",
    EventType.REQUEST_BREAK_GLASS: "JP3008",
    EventType.REQUEST_REVIEWED: "JP3009",
    EventType.GRANT_ADDED: "JP3100",
    EventType.GRANT_REVOKED: "JP3101",
    EventType.GRANT_RELEASED: "JP3102",
    EventType.GRANT_BREAK_GLASS: "JP3103",
    EventType.POLICY_RELOADED: "JP4000",
    EventType.POLICY_RELOAD_FAILED: "JP4001",
    EventType.ADMIN_API_CALL: "JP5000",
    EventType.IDENTITY_SIGNED_IN: "JP5100",
    EventType.SESSION_PASSWORD_ISSUED: "JP5101",
    EventType.SESSION_PASSWORD_REVOKED: "JP5102",
    EventType.AUDIT_CHECKPOINT: "JP6000",
    EventType.AUDIT_SEALED: "JP6001",
}


@dataclass
class SessionInfo:
    """What every event of one client session repeats."""

    session_id: str
    client_addr: str
    user: str | None = None
    groups: tuple[str, ...] = ()
    client_program: str | None = None
    client_name: str | None = None
    token_id: str | None = None
    instance: str | None = None  # the upstream instance (config upstreams[].name)
    environment: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user": self.user,
            "groups": list(self.groups),
            "client_addr": self.client_addr,
            "client_program": self.client_program,
            "client_name": self.client_name,
            "instance": self.instance,
            "environment": self.environment,
        }


_SECRET_STATEMENT = re.compile(r"\b(IDENTIFIED|PASSWORD|SECRET|TOKEN)\b", re.IGNORECASE)
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"", re.DOTALL)


def redact_statement(sql: str, max_chars: int) -> tuple[str, bool]:
    """Statement text for audit: literals of statements that may carry a secret are blanked;
    long text is truncated (the caller records the original length and hash)."""
    if _SECRET_STATEMENT.search(sql):
        sql = _STRING_LITERAL.sub("'?'", sql)
    if len(sql) > max_chars:
        return sql[:max_chars], True
    return sql, False


_second: tuple[int, str] = (0, "")


def _utc_now_iso() -> str:
    """datetime.now(timezone.utc).isoformat(timespec="microseconds"), the date and time of day
    formatted once per second."""
    global _second
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{ns // 1000:06d}+00:00"


class AuditUnavailable(Exception):
    """A fail_closed statement's event could not be written durably in time."""


MODES = ("fail_closed", "best_effort", "off")


def mode_for(configured: str, environments: Iterable[str | None]) -> str:
    """The audit mode for statements that may be in any of `environments` (a session's: every
    environment of its instance, proxy.environments): `audit.mode`, where "auto" is fail_closed
    if one of them is prod, else best_effort."""
    if configured == "auto":
        return "fail_closed" if PROD in environments else "best_effort"
    return configured


EXIT_CLOSE_TIMEOUT_S = 3.0  # the atexit seal waits this long, at most, for every sink


class AuditEmitter:
    """Builds, seals (seq + hash chain) and dispatches every audit event.

    `emit` is cheap and thread-safe (the API's worker threads emit too): it seals the event
    under a lock and hands it to each sink's writer thread. `emit_durable` also waits, on the
    event loop, until every required sink has the event: what fail_closed statements do before
    they are forwarded. `mode_for(*environments)`: `audit.mode` for statements in those
    environments ("auto": fail_closed if one is prod, else best_effort).

    The chain segment an emitter writes (seq 1, 2, ... of its `proxy_instance`) is closed by
    `close()` with an `audit.sealed` event, so that `audit verify` can tell a whole trail from a
    cut one; `audit.checkpoint` events (every `checkpoint_interval_s`, or `checkpoint_events`
    events, whichever comes first; only while events are emitted) bound what a crash can leave
    uncovered. An emitter never closed is closed (and sealed, reason "exit") at interpreter
    exit, as long as Python still runs its atexit handlers."""

    def __init__(
        self,
        sinks: Iterable[Sink],
        instance: str,
        clock: Callable[[], datetime] | None = None,
        max_statement_chars: int = 16384,
        *,
        max_event_bytes: int = 65536,
        redact_literals: bool = False,
        mode: str = "auto",
        max_queue: int = 100_000,
        durable_timeout_s: float = 2.0,
        checkpoint_interval_s: float = 60.0,
        checkpoint_events: int = 10_000,
        close_at_exit: bool = True,
    ) -> None:
        self.sinks = list(sinks)
        self.instance = instance
        self.clock = clock  # None: the system clock (formatted without building a datetime)
        self.max_statement_chars = max_statement_chars
        self.max_event_bytes = max_event_bytes
        self.redact_literals = redact_literals
        self.mode = mode
        self.durable_timeout_s = durable_timeout_s
        self._lock = threading.Lock()
        # event_id: this emitter's random 64-bit prefix + a counter: unique without a syscall
        # per event (os.urandom costs ~10 µs here).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        self._n = 0
        self._seq = 0
        self._last_hash = GENESIS
        self._sync = [s for s in self.sinks if s.synchronous]
        self._writers = [SinkWriter(s, max_queue, self._written, self._failed) for s in self.sinks if not s.synchronous]
        self._required = [w for w in self._writers if w.sink.required]
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.refused = 0  # fail_closed statements refused because audit was unavailable
        self.on_close: list[Callable[[], Any]] = []  # run after the sinks are closed (their stores)
        self._soon: deque[tuple[str, SessionInfo | None, dict[str, Any]]] = deque()  # see emit_soon
        self._soon_scheduled = False
        # Checkpoints and the seal (under self._lock): events of this segment, not counting the
        # trail's own; events since the last checkpoint; when it was written.
        self.checkpoint_interval_s = checkpoint_interval_s  # 0: none by time
        self.checkpoint_events = checkpoint_events  # 0: none by count
        self._segment_events = 0
        self._since_checkpoint = 0
        self._checkpoints = 0
        self._checkpoint_at = time.monotonic()
        self._stopping = threading.Event()  # wakes the checkpointer at close
        self._closed = False  # sealed: later events are refused, never written after the seal
        self._after_close = 0
        self._close_lock = threading.Lock()
        self._pid = os.getpid()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_interval_s > 0:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="audit-checkpoint", daemon=True)
            self._checkpointer.start()
        if close_at_exit:
            _OPEN.add(self)

    # -- modes ------------------------------------------------------------------------------

    def mode_for(self, *environments: str | None) -> str:
        return mode_for(self.mode, environments)

    # -- emit -------------------------------------------------------------------------------

    def emit(self, event_type: str, session: SessionInfo | None, **fields: Any) -> dict[str, Any]:
        return self._emit(event_type, session, fields, False)[0]

    async def emit_durable(self, event_type: str, session: SessionInfo | None, **fields: Any) -> dict[str, Any]:
        """Emit, then wait until every required sink has written it. Raises AuditUnavailable
        at once when one is failing, or after `durable_timeout_s`."""
        event, n = self._emit(event_type, session, fields, True)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if n < 0:
                self.refused += 1
                raise AuditUnavailable("the audit trail is closed (the proxy is stopping)")
            if any(not w.up for w in self._required):
                self.refused += 1
                raise AuditUnavailable(self._unavailable())
            if n <= self._durable_n():
                return event
            self._waiters.append((n, loop, future))
        try:
            await asyncio.wait_for(future, self.durable_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            self.refused += 1
            raise AuditUnavailable(f"the audit trail did not confirm within {self.durable_timeout_s:g} s") from None
        except AuditUnavailable:
            self.refused += 1
            raise
        finally:
            if not future.done() or future.cancelled():
                with self._lock:
                    self._waiters = [w for w in self._waiters if w[2] is not future]
        return event

    def emit_soon(self, event_type: str, session: SessionInfo | None, fields: dict[str, Any]) -> None:
        """Emit later in this event loop turn, in a batch with the others (the event is built and
        sealed with the audit code and data still in the CPU's caches: ~2x cheaper under load
        than one at a time between statements), and always before any event emitted after it.
        Only from the event loop's thread; `fields` must not change afterwards."""
        self._soon.append((event_type, session, fields))
        if not self._soon_scheduled:
            self._soon_scheduled = True
            asyncio.get_running_loop().call_soon(self.run_soon)

    def run_soon(self) -> None:
        """Emit what emit_soon holds, as one batch handed to each sink (called by the loop; by
        every other emit first, so order is kept)."""
        self._soon_scheduled = False
        soon = self._soon
        if not soon:
            return
        with self._lock:
            records = []
            while soon:
                try:
                    event_type, session, fields = soon.popleft()
                except IndexError:  # another thread emptied it first
                    break
                if self._closed:
                    self._refuse_after_close(event_type)
                    continue
                records.append(self._seal_locked(self._build(event_type, session, fields), False))
            if records:
                self._counted_locked(records)
                for sink in self._sync:
                    sink.write_batch(records)
                for writer in self._writers:
                    writer.put_many(records)  # a checkpoint at its end: through the writer thread

    def _emit(self, event_type: str, session: SessionInfo | None, fields: dict[str, Any],
              durable: bool) -> tuple[dict[str, Any], int]:
        if self._soon:
            self.run_soon()
        event = self._build(event_type, session, fields)
        with self._lock:
            if self._closed:
                self._refuse_after_close(event_type)
                return event, -1
            record = self._seal_locked(event, durable)
            records = [record]
            self._counted_locked(records)
            self._dispatch_locked(records)
            return event, record.n

    def _dispatch_locked(self, records: list[Record]) -> None:
        for sink in self._sync:
            sink.write_batch(records)
        for writer in self._writers:
            for record in records:
                writer.put(record)

    def _refuse_after_close(self, event_type: str) -> None:
        self._after_close += 1
        log.error("audit event after the trail was sealed: not written", type=event_type,
                  proxy_instance=self.instance, refused=self._after_close)

    # -- checkpoints and the seal ---------------------------------------------------------------

    def _counted_locked(self, records: list[Record]) -> None:
        """Count `records` (just sealed, none of the trail's own) towards the segment and the next
        checkpoint; append that checkpoint to `records` when `checkpoint_events` are reached."""
        self._segment_events += len(records)
        self._since_checkpoint += len(records)
        if self.checkpoint_events and self._since_checkpoint >= self.checkpoint_events:
            records.append(self._checkpoint_locked())

    def _trail_event_locked(self, event_type: str, fields: dict[str, Any]) -> Record:
        """One of the trail's own events (checkpoint, seal), sealed durable: the file sink syncs
        the batch that carries it, so everything before it is on disk once it is."""
        fields = {**dict.fromkeys(_COMMON), "groups": [], **fields}  # never a caller's
        fields.update(last_seq=self._seq, last_hash=self._last_hash, events=self._segment_events)
        return self._seal_locked(self._build(event_type, None, fields), True)

    def _checkpoint_locked(self) -> Record:
        record = self._trail_event_locked(EventType.AUDIT_CHECKPOINT, {
            "checkpoint_interval_s": self.checkpoint_interval_s, "checkpoint_events": self.checkpoint_events})
        self._since_checkpoint = 0
        self._checkpoints += 1
        self._checkpoint_at = time.monotonic()
        return record

    def checkpoint(self) -> dict[str, Any] | None:
        """Write an `audit.checkpoint` now, if any event was emitted since the last one (or since
        the start); return it. Called by the checkpoint thread every `checkpoint_interval_s`."""
        if self._soon:
            self.run_soon()
        with self._lock:
            if self._closed or not self._since_checkpoint:
                return None
            record = self._checkpoint_locked()
            self._dispatch_locked([record])
        return record.event

    def _checkpoint_loop(self) -> None:
        interval = self.checkpoint_interval_s
        while not self._stopping.is_set():
            left = self._checkpoint_at + interval - time.monotonic()
            if left > 0 or not self._since_checkpoint:
                # Idle: look again in a full interval, so an event is covered within one.
                self._stopping.wait(left if left > 0 else interval)
                continue
            try:
                self.checkpoint()
            except Exception:  # noqa: BLE001 - the checkpoint thread must outlive any bug here
                log.exception("audit checkpoint failed", proxy_instance=self.instance)
                self._stopping.wait(interval)

    def _build(self, event_type: str, session: SessionInfo | None, fields: dict[str, Any]) -> dict[str, Any]:
        statement = fields.get("statement")
        if isinstance(statement, str):
            self._statement_fields(statement, fields)
        event: dict[str, Any] = {
            "type": event_type,
            "code": CODES[event_type],
            "schema_version": SCHEMA_VERSION,
            "time": self.clock().isoformat(timespec="microseconds") if self.clock else _utc_now_iso(),
            "event_id": f"{self._id_prefix}{next(self._ids):016x}",
            "proxy_instance": self.instance,  # which proxy process (host:pid); "instance" is the upstream's
        }
        if session is not None:
            event.update(session.fields())  # every _COMMON key
            event.update(fields)
        else:
            caller = CALLER.get()
            if caller:
                event.update(caller)
            event.update(fields)
            for key in _COMMON:
                if key not in event:
                    event[key] = [] if key == "groups" else None
        return event

    def _seal_locked(self, event: dict[str, Any], durable: bool) -> Record:
        """Number, chain and seal one event (the caller holds self._lock)."""
        self._n += 1
        self._seq += 1
        line = seal(event, self._seq, self._last_hash)
        if len(line) > self.max_event_bytes:
            line = self._shrink(event)
        self._last_hash = event["hash"]
        return Record(self._n, line, event, durable)

    def _statement_fields(self, statement: str, fields: dict[str, Any]) -> None:
        if fields.get("fingerprint") is None:
            fields["fingerprint"] = fingerprint(statement)
        if self.redact_literals:
            statement = normalize(statement)
            fields["redacted"] = True
        text, truncated = redact_statement(statement, self.max_statement_chars)
        if truncated:
            fields["statement_length"] = len(statement)
            fields["statement_sha256"] = hashlib.sha256(statement.encode("utf-8")).hexdigest()
        fields["statement"] = text
        if self.redact_literals and "params" in fields:
            fields["params"] = len(fields["params"]) if isinstance(fields["params"], list) else None

    def _shrink(self, event: dict[str, Any]) -> str:
        """An event over max_event_bytes: its largest strings and lists are cut (their original
        length and SHA-256 recorded in `truncated`); the event is resealed, never dropped."""
        del event["hash"]
        truncated: dict[str, Any] = {}
        budget = max(self.max_event_bytes // 4, 256)
        for key, value in sorted(event.items(), key=lambda kv: -len(json.dumps(kv[1], default=str))):
            text = json.dumps(value, default=str, ensure_ascii=False)
            if len(text) <= budget or key in _CHAIN_KEYS:
                continue
            truncated[key] = {"length": len(text), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
            event[key] = text[:budget] + "…"
            if len(canonical(event)) < self.max_event_bytes - 1024:
                break
        event["truncated"] = truncated
        return seal(event, event["seq"], event["prev_hash"])

    # -- durability ---------------------------------------------------------------------------

    def _durable_n(self) -> int:
        return min((w.written_n for w in self._required), default=self._n)

    def _written(self, _: SinkWriter) -> None:
        with self._lock:
            durable = self._durable_n()
            done = [w for w in self._waiters if w[0] <= durable]
            if done:
                self._waiters = [w for w in self._waiters if w[0] > durable]
        for _, loop, future in done:
            _wake(loop, future, None)

    def _failed(self, writer: SinkWriter) -> None:
        if not writer.sink.required:
            return
        with self._lock:
            failed, self._waiters = self._waiters, []
        error = AuditUnavailable(self._unavailable())
        for _, loop, future in failed:
            _wake(loop, future, error)

    def _unavailable(self) -> str:
        down = [w.sink.name for w in self._required if not w.up]
        return f"the audit trail is unavailable ({', '.join(down) or 'a sink'} failing)"

    # -- operations ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "events": self._n,
            "refused_statements": self.refused,
            "sinks": {w.sink.name: {"up": w.up, "queued": w.queued, "dropped": w.dropped, "failures": w.failures,
                                    "inline_pauses": w.inline_pauses,
                                    "last_error": w.last_error} for w in self._writers},
        }

    @property
    def dropped(self) -> int:
        return sum(w.dropped for w in self._writers)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every writer's queue is empty (tests, shutdown)."""
        self.run_soon()
        return all(w.wait_idle(timeout_s) for w in self._writers)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout_s: float = 5.0, *, reason: str = "close") -> None:
        """Seal the trail and close every sink. Whatever was emitted before (what emit_soon still
        holds too) is written, then an `audit.sealed` event (`reason`: "close", or "exit" from the
        atexit handler), through every sink; each writer writes what it has queued (for up to
        `timeout_s` in all) and closes its sink, which syncs its file. Events emitted afterwards
        are refused (logged, never written after the seal). Idempotent."""
        self._close(timeout_s, reason, True)

    def _close(self, timeout_s: float, reason: str, sealed: bool) -> None:
        with self._close_lock:
            if self._closed:
                return
            deadline = time.monotonic() + timeout_s
            self.run_soon()
            with self._lock:
                seal = None
                if sealed:
                    seal = self._trail_event_locked(EventType.AUDIT_SEALED, {
                        "reason": reason, "checkpoints": self._checkpoints,
                        "dropped": {w.sink.name: w.dropped for w in self._writers}})
                    self._dispatch_locked([seal])
                self._closed = True
            self._stopping.set()
            for writer in self._writers:
                writer.begin_close()
            for writer in self._writers:  # concurrently: one slow sink does not eat the others' time
                writer.finish_close(deadline)
            for sink in self._sync:
                sink.close()
            for callback in self.on_close:
                callback()
            _OPEN.discard(self)
        if seal is not None:
            (log.warning if reason != "close" else log.info)(
                "audit closed", sealed_seq=seal.event["seq"], last_hash=seal.event["hash"], reason=reason,
                proxy_instance=self.instance, events=self._segment_events, dropped=self.dropped)


# Emitters still open: sealed at interpreter exit (an unhandled exception, sys.exit, a signal
# handler that exits). Not after os._exit or SIGKILL: checkpoints cover those.
_OPEN: weakref.WeakSet[AuditEmitter] = weakref.WeakSet()


def _close_at_exit() -> None:
    for emitter in list(_OPEN):
        if emitter._pid != os.getpid():  # a forked child's copy: its parent seals it
            continue
        try:  # one that never emitted has no segment to seal: its sinks are only closed
            emitter._close(EXIT_CLOSE_TIMEOUT_S, "exit", emitter._seq > 0)
        except Exception:  # noqa: BLE001 - the other emitters still get theirs
            log.exception("audit seal at exit failed", proxy_instance=emitter.instance)


atexit.register(_close_at_exit)


_CHAIN_KEYS = frozenset({"type", "code", "schema_version", "time", "event_id", "proxy_instance", "seq", "prev_hash"})


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], error: BaseException | None) -> None:
    try:
        loop.call_soon_threadsafe(_settle, future, error)
    except RuntimeError:  # that loop is closed: nobody waits any more
        pass


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

"""A session's statement events, as hooks called at each step of a statement's way (in the style
of Teleport's `On*` audit methods): `on_denied`, `on_admitted` (just before forwarding; written
durably first in fail_closed), `on_end` (completed or failed, with the result), `on_lost`
(forwarded and never ended: the database or the client went away, a KILL, a bug) and
`announce_long` (best_effort: a statement still running after ANNOUNCE_AFTER_S is put on record).

One statement's fields are built once (`statement_fields`) and carried from `on_admitted` to its
end, so `statement.allowed`, `statement.completed` and `statement.failed` of one statement say the
same things, joined by `statement_id`. The metrics (`ctx.stats`) are counted here too: every
statement ends in exactly one of these hooks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.audit.events import AuditEmitter, AuditUnavailable, EventType, SessionInfo
from proxy.authz.model import Decision
from proxy.metrics import Stats
from proxy.mysql import wire
from proxy.protocol.errors import ER, ClientError

if TYPE_CHECKING:
    from proxy.upstream.relay import Outcome

ANNOUNCE_AFTER_S = 1.0  # best_effort: a statement still running this long gets its statement.allowed
Fields = dict[str, Any]


class StatementAudit:
    """The statement events of one session (`info`), in audit `mode` (off, best_effort,
    fail_closed). `context` gives the fields that depend on the session's state when the
    statement arrives (the current database, the environment of the databases it names)."""

    def __init__(self, audit: AuditEmitter, stats: Stats, info: SessionInfo, mode: str,
                 context: Callable[[Decision], Fields]) -> None:
        self._audit = audit
        self._stats = stats
        self._info = info
        self.mode = mode
        self._context = context
        self.statements = 0  # ended (for session.end)
        self.denied = 0
        self._n = 0
        self.statement_id: str | None = None
        self._in_flight: Fields | None = None  # the admitted statement's fields, until it ends
        self._since = 0.0
        self._announced = False
        self._running = False  # admitted and not ended (counted in the metrics when lost)

    @property
    def in_flight(self) -> bool:
        return self._running

    def statement_fields(self, command: int, sql: str, decision: Decision) -> Fields:
        analysis = decision.analysis
        return {
            "command": wire.COMMAND_NAMES.get(command, str(command)),
            "statement": sql,
            "fingerprint": analysis.fingerprint,
            "statement_class": analysis.statement_class,
            **self._context(decision),
            "tables": analysis.audit_tables,
            "privileges": analysis.audit_privileges,
        }

    def on_admitted(self, command: int, sql: str, decision: Decision, extra: Fields) -> Fields | None:
        """The statement is about to be forwarded: its id and fields, held until it ends (None:
        audit off). In fail_closed the caller then awaits `write_admitted`."""
        self._n += 1
        self.statement_id = f"{self._info.session_id}.{self._n}"
        self._running = True
        self._since = time.monotonic()
        self._announced = False
        if self.mode == "off":
            self._in_flight = None
            return None
        fields = self.statement_fields(command, sql, decision)
        fields.update(decision="allow", statement_id=self.statement_id, **extra)
        if decision.masks:
            fields["masked_columns"] = decision.audit_masks
        if decision.used_grants:
            fields["grants"] = decision.audit_grants
        self._in_flight = fields
        return fields

    async def write_admitted(self, fields: Fields) -> None:
        """fail_closed: `statement.allowed` written durably before the statement is forwarded,
        or the statement is refused (ClientError) and never reaches the database."""
        try:
            await self._audit.emit_durable(EventType.STATEMENT_ALLOWED, self._info, **fields)
            self._announced = True
        except AuditUnavailable as e:
            self._in_flight = None
            self._running = False
            self.denied += 1
            fields.update(decision="deny", reason_code="audit_unavailable", reason=str(e))
            self._audit.emit(EventType.STATEMENT_DENIED, self._info, **fields)
            raise ClientError(
                ER.AUDIT_UNAVAILABLE,
                f"Statement refused by jitproxy (audit_unavailable): {e}. This database requires every "
                "statement to be audited before it runs (audit mode fail_closed); nothing was sent to it. "
                "Try again shortly; if it persists, tell the jitproxy operators.",
            ) from None

    def announce_long(self, now: float) -> None:
        """best_effort: `statement.allowed` for a statement running for ANNOUNCE_AFTER_S already,
        so long statements are on record while they run (the server's housekeeping calls it)."""
        fields = self._in_flight
        if fields is None or self._announced or now - self._since < ANNOUNCE_AFTER_S:
            return
        self._announced = True
        self._audit.emit(EventType.STATEMENT_ALLOWED, self._info, **fields)

    def on_lost(self, error: str) -> None:
        """A statement that was forwarded but never ended normally: `statement.failed` with what
        is known (`outcome_unknown`)."""
        fields, self._in_flight = self._in_flight, None
        if self._running:
            self._stats.statement("allow", "failed", "interrupted", None)
        self._running = False
        if fields is None:
            return
        self.statements += 1
        fields.update(error_code=ER.UPSTREAM_LOST, error=error, outcome_unknown=True,
                      duration_ms=round((time.monotonic() - self._since) * 1000, 3))
        self._audit.emit(EventType.STATEMENT_FAILED, self._info, **fields)

    def on_denied(self, command: int, sql: str, decision: Decision, elapsed: float, extra: Fields) -> None:
        self.statements += 1
        self.denied += 1
        reason_code = decision.code.value if decision.code else None
        self._stats.statement("deny", "denied", reason_code or "denied", None)
        fields = self.statement_fields(command, sql, decision)
        fields.update(decision="deny", reason_code=reason_code, reason=decision.reason,
                      duration_ms=round(elapsed * 1000, 3), **extra)
        self._audit.emit_soon(EventType.STATEMENT_DENIED, self._info, fields)

    def on_end(self, decision: Decision, elapsed: float, outcome: Outcome | None, cancelled: str | None,
               extra: Fields) -> None:
        """The end of an admitted statement: `statement.completed` / `statement.failed` with
        everything `statement.allowed` carries and the result. `cancelled`: why the proxy
        cancelled it (statement_timeout), if it did."""
        self.statements += 1
        fields, self._in_flight = self._in_flight, None
        self._running = False
        if outcome is None or (outcome.error is None and not outcome.truncated):
            self._stats.statement("allow", "completed", "", elapsed)
        else:
            self._stats.statement("allow", "failed", cancelled or ("max_rows" if outcome.error is None else "error"),
                                  elapsed)
        if fields is None:  # audit off
            return
        fields["duration_ms"] = round(elapsed * 1000, 3)
        if cancelled is not None:
            fields["reason_code"] = cancelled
        if extra:
            fields.update(extra)
        event_type = EventType.STATEMENT_COMPLETED
        if outcome is not None:
            fields.update(rows=outcome.rows, affected_rows=outcome.affected_rows, warnings=outcome.warnings)
            if outcome.last_insert_id:
                fields["last_insert_id"] = outcome.last_insert_id
            if outcome.error is not None:
                fields.update(error_code=outcome.error.code, sqlstate=outcome.error.sqlstate,
                              error=outcome.error.message[:512])
                event_type = EventType.STATEMENT_FAILED
            elif outcome.truncated:
                fields.update(error_code=ER.TOO_BIG_SELECT, reason_code="max_rows", rows_sent=decision.max_rows)
                event_type = EventType.STATEMENT_FAILED
        self._audit.emit_soon(event_type, self._info, fields)

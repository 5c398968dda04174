"""Typed audit events and the emitter every component writes through.

Audit is not logging: each event has a `type` and a stable `code`, names the real person, and
never carries a token, password or IAM signature. Sinks receive one JSON object per event."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol


class EventType:
    SESSION_START = "session.start"
    SESSION_REJECTED = "session.rejected"
    SESSION_END = "session.end"
    STATEMENT_ALLOWED = "statement.allowed"
    STATEMENT_FAILED = "statement.failed"
    STATEMENT_DENIED = "statement.denied"
    REQUEST_CREATED = "request.created"
    REQUEST_APPROVAL = "request.approval"  # one approver's approval, before the request is approved
    REQUEST_APPROVED = "request.approved"
    REQUEST_DENIED = "request.denied"
    REQUEST_CANCELLED = "request.cancelled"
    REQUEST_EXPIRED = "request.expired"
    GRANT_ADDED = "grant.added"
    GRANT_REVOKED = "grant.revoked"


CODES = {
    EventType.SESSION_START: "JP1000",
    EventType.SESSION_REJECTED: "JP1001",
    EventType.SESSION_END: "JP1002",
    EventType.STATEMENT_ALLOWED: "JP2000",
    EventType.STATEMENT_FAILED: "JP2001",
    EventType.STATEMENT_DENIED: "JP2002",
    EventType.REQUEST_CREATED: "JP3000",
    EventType.REQUEST_APPROVAL: "JP3001",
    EventType.REQUEST_APPROVED: "JP3002",
    EventType.REQUEST_DENIED: "JP3003",
    EventType.REQUEST_CANCELLED: "JP3004",
    EventType.REQUEST_EXPIRED: "JP3005",
    EventType.GRANT_ADDED: "JP3100",
    EventType.GRANT_REVOKED: "JP3101",
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


class Sink(Protocol):
    def write(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class StreamSink:
    """JSON lines to a text stream (stdout by default: what log shippers ingest)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), default=str, ensure_ascii=False) + "\n"
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line)
            stream.flush()

    def close(self) -> None:
        pass


class FileSink(StreamSink):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        super().__init__(os.fdopen(fd, "a", encoding="utf-8"))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class MemorySink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def write(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


_SECRET_STATEMENT = re.compile(r"\b(IDENTIFIED|PASSWORD|SECRET|TOKEN)\b", re.IGNORECASE)
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"", re.DOTALL)


def redact_statement(sql: str, max_chars: int) -> tuple[str, bool]:
    """Statement text for audit: literals of statements that may carry a secret are blanked;
    long text is truncated (the original length is reported by the caller)."""
    if _SECRET_STATEMENT.search(sql):
        sql = _STRING_LITERAL.sub("'?'", sql)
    if len(sql) > max_chars:
        return sql[:max_chars], True
    return sql, False


class AuditEmitter:
    def __init__(
        self,
        sinks: Iterable[Sink],
        instance: str,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        max_statement_chars: int = 16384,
    ) -> None:
        self.sinks = list(sinks)
        self.instance = instance
        self.clock = clock
        self.max_statement_chars = max_statement_chars
        self.failures = 0

    def emit(self, event_type: str, session: SessionInfo | None, **fields: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": event_type,
            "code": CODES[event_type],
            "time": self.clock().isoformat(timespec="microseconds"),
            "event_id": uuid.uuid4().hex,
            "proxy_instance": self.instance,  # which proxy process (host:pid); "instance" is the upstream's
        }
        if session is not None:
            event.update(session.fields())
        if "statement" in fields and isinstance(fields["statement"], str):
            text = fields["statement"]
            fields["statement"], truncated = redact_statement(text, self.max_statement_chars)
            if truncated:
                fields["statement_length"] = len(text)
        event.update(fields)
        for sink in self.sinks:
            try:
                sink.write(event)
            except Exception:  # noqa: BLE001 - counted; issue 6 adds fail-closed sinks
                self.failures += 1
        return event

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

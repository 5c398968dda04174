"""The store as an audit sink, on SQLite and PostgreSQL: the emitter's sealed events land in the
store exactly (the chain verifies from it), a retried batch stores nothing twice, failures reach
the emitter (fail_closed waits for the store), and closing the sink leaves the store open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from proxy.audit.chain import verify
from proxy.audit.events import AuditEmitter, AuditUnavailable, EventType, MemorySink, SessionInfo
from proxy.audit.sinks import Record
from proxy.audit.store_sink import StoreSink
from proxy.audit.query import AuditQuery
from proxy.store.base import Store, StoreError
from tests.store import conftest as store_fixtures

# The store tests' fixtures (each test runs on SQLite and on a private PostgreSQL).
postgres_server = store_fixtures.postgres_server
postgres_dsn = store_fixtures.postgres_dsn
store_url = store_fixtures.store_url
open_stores = store_fixtures.open_stores
store = store_fixtures.store

SESSION = SessionInfo(session_id="s1", client_addr="127.0.0.1:1", user="dev", instance="hr-prod",
                      environment="prod")


class Flaky:
    """A store whose next `failures` appends fail after committing (the answer was lost)."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.calls = 0

    def append_audit(self, events: Any) -> None:
        self.calls += 1
        self.store.append_audit(events)
        if self.failures:
            self.failures -= 1
            raise StoreError("connection lost during COMMIT")


def _statements(audit: AuditEmitter, n: int) -> None:
    for i in range(n):
        audit.emit(EventType.STATEMENT_DENIED, SESSION, statement=f"SELECT {i} FROM salary",
                   tables=["hr_prod.salary"], decision="deny", reason_code="missing_grant")


def test_the_sink_has_what_the_emitter_needs(store: Store) -> None:
    sink = StoreSink(store)
    assert (sink.name, sink.required, sink.synchronous) == ("store", True, False)
    assert StoreSink(store, name="pg", required=False).required is False


def test_emitted_events_are_stored_exactly_and_verify(store: Store) -> None:
    memory = MemorySink()
    audit = AuditEmitter([StoreSink(store), memory], instance="host:1")
    audit.emit(EventType.SESSION_START, SESSION)
    _statements(audit, 30)
    audit.emit(EventType.SESSION_END, SESSION)
    audit.close()  # writes what is queued
    chain = store.audit_chain("host:1")
    assert chain == memory.events
    assert verify(chain).intact and verify(chain).chains == {"host:1": 33}  # 32 and the seal
    denied = store.search_audit(AuditQuery(table="hr_prod.salary", decision="deny", user="dev", limit=5))
    assert [e["statement"] for e in denied] == [f"SELECT {i} FROM salary" for i in range(29, 24, -1)]
    store.revision()  # closing the sink left the store open


def test_records_and_dicts_are_both_taken(store: Store) -> None:
    sink = StoreSink(store)
    event = {"type": "session.start", "time": "2030-01-01T00:00:00.000000+00:00", "event_id": "a" * 32,
             "proxy_instance": "p:1", "seq": 1, "note": "ünï"}
    line = json.dumps({**event, "event_id": "b" * 32, "seq": 2}, ensure_ascii=False)
    sink.write_batch([event, Record(1, line, {"ignored": True})])
    assert store.audit_chain("p:1") == [event, json.loads(line)]
    with pytest.raises(TypeError, match="records"):
        sink.write_batch(["not an event"])


def test_a_batch_retried_after_a_lost_answer_is_stored_once(store: Store) -> None:
    flaky = Flaky(store, failures=2)
    audit = AuditEmitter([StoreSink(flaky)], instance="host:1")  # type: ignore[arg-type]
    _statements(audit, 10)
    assert audit.flush(10)
    audit.close()
    assert flaky.calls >= 3
    chain = store.audit_chain("host:1")
    assert [e["seq"] for e in chain] == list(range(1, 12))  # 10 and the seal
    assert verify(chain).intact


def test_failures_propagate_and_fail_closed_waits_for_the_store(open_stores: Callable[[], Store]) -> None:
    reader, broken = open_stores(), open_stores()
    broken.close()
    with pytest.raises(StoreError):
        StoreSink(broken).write_batch([{"type": "x", "time": "2030-01-01T00:00:00+00:00", "event_id": "e1"}])

    audit = AuditEmitter([StoreSink(reader)], instance="host:2")

    async def scenario() -> dict[str, Any]:
        return await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 1",
                                        decision="allow")

    event = asyncio.run(scenario())
    assert reader.search_audit(AuditQuery(proxy_instance="host:2")) == [event]  # stored before it returned
    audit.close()

    sink = StoreSink(broken)
    down = AuditEmitter([sink], instance="host:3", durable_timeout_s=5)
    with pytest.raises(AuditUnavailable, match="store"):
        asyncio.run(down.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 1"))
    sink.store = reader  # the store is back: the kept event is written
    down.close()
    assert [e.get("statement", e["type"]) for e in reader.audit_chain("host:3")] == ["SELECT 1", "audit.sealed"]

"""The emitter and its writer threads: durability for fail_closed, bounded queues and drop
counting for best_effort, nothing lost across a sink outage, truncation and redaction, file
rotation, and a chain that holds when several threads emit at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from pathlib import Path

import pytest

from proxy.audit.chain import verify
from proxy.audit.events import AuditEmitter, AuditUnavailable, EventType, FileSink, MemorySink, SessionInfo
from proxy.authz.fingerprint import fingerprint
from proxy.audit.sinks import Record
from tests.helpers import eventually

SESSION = SessionInfo(session_id="s1", client_addr="127.0.0.1:1", user="dev")


class SwitchableSink:
    """A sink that fails while `broken` is set and blocks while `gate` is clear."""

    synchronous = False
    name = "switchable"

    def __init__(self, required: bool = True) -> None:
        self.required = required
        self.lines: list[str] = []
        self.broken = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.attempts = 0

    def write_batch(self, records: list[Record]) -> None:
        self.attempts += 1
        self.gate.wait()
        if self.broken.is_set():
            raise OSError("disk on fire")
        self.lines.extend(r.line for r in records)

    def close(self) -> None:
        pass


def _statements(lines: list[str]) -> list[str]:
    """The statements of the events in `lines`, and the seal at their end as "<sealed>"."""
    events = [json.loads(line) for line in lines]
    return [e["statement"] if "statement" in e else f"<{e['type'].removeprefix('audit.')}>" for e in events]


def _emit(audit: AuditEmitter, i: int = 0, **fields) -> dict:
    return audit.emit(EventType.STATEMENT_ALLOWED, SESSION, statement=f"SELECT {i}", **fields)


def test_fail_closed_waits_for_the_sink_and_refuses_while_it_fails():
    sink = SwitchableSink()
    audit = AuditEmitter([sink], instance="t:1")

    async def scenario() -> None:
        event = await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 1")
        assert event["hash"] in "".join(sink.lines)  # written before emit_durable returned
        sink.broken.set()
        with pytest.raises(AuditUnavailable, match="switchable"):
            await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 2")
        with pytest.raises(AuditUnavailable):  # known down: refused at once
            await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 3")
        sink.broken.clear()
        assert await asyncio.to_thread(audit.flush, 10)
        await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 4")

    asyncio.run(scenario())
    audit.close()
    # nothing lost: the events emitted during the outage were kept and written, in order
    statements = _statements(sink.lines)
    assert statements == ["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4", "<sealed>"]
    assert verify(json.loads(line) for line in sink.lines).intact
    assert audit.refused == 2


def test_fail_closed_gives_up_after_the_durable_timeout():
    sink = SwitchableSink()
    sink.gate.clear()  # the sink hangs
    audit = AuditEmitter([sink], instance="t:1", durable_timeout_s=0.2)

    async def scenario() -> None:
        with pytest.raises(AuditUnavailable, match="did not confirm"):
            await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 1")

    asyncio.run(scenario())
    sink.gate.set()
    audit.close()
    assert _statements(sink.lines) == ["SELECT 1", "<sealed>"]


def test_an_unrequired_sink_does_not_hold_fail_closed_statements():
    optional = SwitchableSink(required=False)
    optional.broken.set()
    audit = AuditEmitter([optional, MemorySink()], instance="t:1")

    async def scenario() -> None:
        await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 1")

    asyncio.run(scenario())
    optional.broken.clear()
    audit.close()


def test_best_effort_keeps_going_and_counts_drops_past_the_queue():
    sink = SwitchableSink()
    sink.broken.set()
    audit = AuditEmitter([sink], instance="t:1", max_queue=10)
    for i in range(40):
        _emit(audit, i)  # never raises, never waits
    assert audit.dropped == 30  # ten kept (a failed batch stays queued until written)
    assert eventually(lambda: audit.stats()["sinks"]["switchable"]["up"] is False)
    sink.broken.clear()
    audit.close()
    assert audit.dropped + len(sink.lines) == 41  # 40 and the seal, queued past max_queue
    seal = json.loads(sink.lines[-1])
    assert seal["type"] == "audit.sealed" and seal["dropped"] == {"switchable": 30}
    assert [p.kind for p in verify(json.loads(line) for line in sink.lines).problems] == ["missing"]


def test_a_long_statement_is_cut_with_its_length_and_hash():
    memory = MemorySink()
    audit = AuditEmitter([memory], instance="t:1", max_statement_chars=300)
    text = "SELECT " + ", ".join(f"'{i}'" for i in range(200))
    audit.emit(EventType.STATEMENT_ALLOWED, SESSION, statement=text)
    event = memory.events[-1]
    assert len(event["statement"]) == 300 and event["statement_length"] == len(text)
    assert event["statement_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert event["fingerprint"] == fingerprint(text)


def test_an_event_over_the_size_limit_is_cut_never_dropped():
    memory = MemorySink()
    audit = AuditEmitter([memory], instance="t:1", max_event_bytes=4096)
    params = ["x" * 1000] * 20
    audit.emit(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT ?", params=params)
    event = memory.events[-1]
    line_length = len(json.dumps(event, ensure_ascii=False))
    assert line_length < 4096 and "params" in event["truncated"]
    original = json.dumps(params, ensure_ascii=False)
    assert event["truncated"]["params"] == {"length": len(original),
                                            "sha256": hashlib.sha256(original.encode()).hexdigest()}
    assert verify(memory.events).ok  # resealed after cutting


def test_redacted_literals_keep_the_fingerprint():
    memory = MemorySink()
    audit = AuditEmitter([memory], instance="t:1", redact_literals=True)
    sql = "SELECT * FROM hr_prod.employee WHERE ssn = '123-45-6789' AND id = 42"
    audit.emit(EventType.STATEMENT_ALLOWED, SESSION, statement=sql, params=["secret"])
    event = memory.events[-1]
    assert event["statement"] == "SELECT * FROM hr_prod.employee WHERE ssn = ? AND id = ?"
    assert event["fingerprint"] == fingerprint(sql) and event["redacted"] is True
    assert "123-45-6789" not in json.dumps(event) and event["params"] == 1  # only their count


def test_file_rotation_keeps_every_event_and_the_chain(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    audit = AuditEmitter([FileSink(path, max_bytes=4000, backups=50, fsync=False)], instance="t:1")
    for i in range(60):
        _emit(audit, i)
        audit.flush()  # one event per batch: rotation between batches
    audit.close()
    files = sorted(tmp_path.glob("audit.jsonl*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    assert len(files) > 3
    lines = [line for f in files for line in f.read_text().splitlines()]
    assert len(lines) == 61 and verify(json.loads(line) for line in lines).intact  # 60 and the seal
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)


def test_threads_emitting_at_once_keep_one_chain():
    memory = MemorySink()
    audit = AuditEmitter([memory], instance="t:1")
    threads = [threading.Thread(target=lambda: [_emit(audit, i) for i in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(memory.events) == 800
    assert verify(memory.events).ok


@pytest.mark.parametrize("mode, environment, expected", [
    ("auto", "prod", "fail_closed"), ("auto", "test", "best_effort"), ("auto", None, "best_effort"),
    ("best_effort", "prod", "best_effort"), ("off", "prod", "off"), ("fail_closed", "test", "fail_closed"),
])
def test_modes_by_environment(mode, environment, expected):
    assert AuditEmitter([], instance="t:1", mode=mode).mode_for(environment) == expected


def test_event_times_are_iso_utc_microseconds_from_the_system_clock():
    from datetime import datetime, timezone

    audit = AuditEmitter([MemorySink()], instance="t:1")
    before = datetime.now(timezone.utc)
    stamp = audit.emit(EventType.SESSION_START, SESSION)["time"]
    after = datetime.now(timezone.utc)
    audit.close()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", stamp)
    assert before <= datetime.fromisoformat(stamp) <= after

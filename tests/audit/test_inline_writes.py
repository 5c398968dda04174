"""Statement events emitted at the end of a loop turn (emit_soon) and written to a file sink from
the loop itself (SinkWriter.put_many): in order with every other event, synced by the writer
thread within sync_interval_s, and handed to the writer thread when the file fails or is slow."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from proxy.audit import sinks
from proxy.audit.chain import verify
from proxy.audit.events import AuditEmitter, EventType, FileSink, SessionInfo
from tests.helpers import eventually

SESSION = SessionInfo(session_id="s1", client_addr="127.0.0.1:1", user="dev")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _soon(audit: AuditEmitter, i: int) -> None:
    audit.emit_soon(EventType.STATEMENT_COMPLETED, SESSION, {"statement": f"SELECT {i}", "rows": 1})


def test_a_loop_turn_of_events_is_written_by_the_loop_in_order_with_the_others(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, sync_interval_s=0.05)
    audit = AuditEmitter([sink], instance="t:1", mode="best_effort")

    async def turn() -> None:
        for i in range(3):
            _soon(audit, i)
        assert not path.read_text()  # nothing yet: they wait for the end of the turn
        await asyncio.sleep(0)  # the turn ends: run_soon seals and appends them
        assert [e["statement"] for e in _lines(path)] == ["SELECT 0", "SELECT 1", "SELECT 2"]
        _soon(audit, 3)
        audit.emit(EventType.SESSION_END, SESSION)  # a direct emit drains what waits first
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert sink.sync_due() is not None  # written inline, not synced yet ...
    eventually(lambda: sink.sync_due() is None, timeout_s=5)  # ... until the writer thread syncs
    audit.close()
    events = _lines(path)
    assert [e.get("statement", e["type"]) for e in events] == ["SELECT 0", "SELECT 1", "SELECT 2", "SELECT 3",
                                                              "session.end", "audit.sealed"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6] and verify(events).intact


def test_a_failing_inline_write_hands_the_events_to_the_writer_thread(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, fsync=False)
    real = sink.write_batch
    calls = []

    def flaky(records, sync=True):
        calls.append(sync)
        if len(calls) == 1:
            raise OSError("disk full")
        return real(records, sync)

    monkeypatch.setattr(sink, "write_batch", flaky)
    audit = AuditEmitter([sink], instance="t:1", mode="best_effort")

    async def turns() -> None:
        _soon(audit, 0)
        await asyncio.sleep(0)  # inline write fails: queued for the thread, which writes it
        _soon(audit, 1)
        await asyncio.sleep(0)  # inline writing paused after a failure: through the thread too

    asyncio.run(turns())
    assert audit.flush()
    audit.close()
    assert [e.get("statement", e["type"]) for e in _lines(path)] == ["SELECT 0", "SELECT 1", "audit.sealed"]
    assert calls[0] is False and all(calls[1:])  # after the failure, only the thread wrote (and synced)


def _three_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay) -> tuple[list[bool], int]:
    """One event per loop turn, three turns, through a file sink whose every write runs
    `delay()` first; returns which writes the loop made (True) or the thread, and the sink's
    inline_pauses. The events themselves always arrive, in order."""
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, fsync=False)
    real = sink.write_batch
    inline = []

    def slow(records, sync=True):
        inline.append(not sync)
        delay()
        return real(records, sync)

    monkeypatch.setattr(sink, "write_batch", slow)
    audit = AuditEmitter([sink], instance="t:1", mode="best_effort")

    async def turns() -> None:
        for i in range(3):
            _soon(audit, i)
            await asyncio.sleep(0)

    asyncio.run(turns())
    assert audit.flush()
    pauses = audit.stats()["sinks"][sink.name]["inline_pauses"]
    audit.close()
    assert [e.get("statement", e["type"]) for e in _lines(path)] == ["SELECT 0", "SELECT 1", "SELECT 2",
                                                                    "audit.sealed"]
    assert inline.pop() is False  # the seal: through the writer thread, synced
    return inline, pauses


def test_a_slow_inline_write_sends_the_next_batches_through_the_thread(tmp_path, monkeypatch):
    # a disk that makes the write wait
    inline, pauses = _three_turns(tmp_path, monkeypatch, lambda: time.sleep(2 * sinks.INLINE_SLOW_S))
    assert inline[0] is True and not any(inline[1:]) and pauses == 1


@pytest.mark.skipif(sinks._RUSAGE_THREAD is None, reason="needs RUSAGE_THREAD (Linux)")
def test_a_write_slow_without_waiting_stays_inline(tmp_path, monkeypatch):
    """Slow only because the loop's thread ran long (or was preempted by a busy machine), never
    waiting for the disk: not a reason to leave the loop's writes (which a single scheduler
    hiccup did before, for 10 s at a time)."""
    def busy() -> None:  # on the CPU all along: no wait
        end = time.perf_counter() + 2 * sinks.INLINE_SLOW_S
        while time.perf_counter() < end:
            pass

    inline, pauses = _three_turns(tmp_path, monkeypatch, busy)
    assert inline == [True, True, True] and pauses == 0


@pytest.mark.parametrize("mode", ["fail_closed", "best_effort"])
def test_durable_events_still_wait_for_the_sync(tmp_path, mode):
    """A fail_closed statement's event goes through the writer thread (written and synced before
    emit_durable returns) even right after inline writes."""
    path = tmp_path / "audit.jsonl"
    audit = AuditEmitter([FileSink(path)], instance="t:1", mode=mode)

    async def scenario() -> None:
        _soon(audit, 0)
        await asyncio.sleep(0)
        event = await audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 1")
        assert event["hash"] in path.read_text()

    asyncio.run(scenario())
    audit.close()
    assert [e["seq"] for e in _lines(path)] == [1, 2, 3]  # and the seal

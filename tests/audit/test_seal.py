"""The end of a trail: an emitter seals its chain segment when it closes (`audit.sealed`) and writes
`audit.checkpoint`s meanwhile, so `jitproxy audit verify` tells a whole trail ("intact: sealed")
from a cut one or a crashed proxy's ("ends without a seal ..., last checkpoint at seq N, K events
after it") and both from a broken one; restarts under the same proxy_instance start a new
segment; events emitted just before close, or before an exit Python still runs, are all written."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from proxy.audit import sinks
from proxy.audit.chain import seal, verify
from proxy.audit.events import AuditEmitter, AuditUnavailable, EventType, FileSink, MemorySink, SessionInfo
from proxy.config import AuditConfig
from tests.helpers import eventually, run_cli

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "audit-event.schema.json").read_text())
SESSION = SessionInfo(session_id="s1", client_addr="127.0.0.1:1", user="dev")


def _deny(audit: AuditEmitter, i: int) -> None:
    audit.emit(EventType.STATEMENT_DENIED, SESSION, statement=f"SELECT * FROM hr_prod.salary WHERE id = {i}",
               decision="deny", reason_code="missing_grant", tables=["hr_prod.salary"])


def _write(path: Path, count: int, instance: str = "web-1:4242", *, close: bool = True, **options) -> AuditEmitter:
    audit = AuditEmitter([FileSink(path)], instance=instance, close_at_exit=close, **options)
    for i in range(count):
        _deny(audit, i)
    if close:
        audit.close()
    else:
        assert audit.flush()
    return audit


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _verify(capsys, *argv: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, "audit", "verify", *argv)
    return code, out + err


# -- the seal and the checkpoints -------------------------------------------------------------------


def test_close_seals_the_segment_with_its_last_seq_hash_and_count(tmp_path):
    path = tmp_path / "audit.jsonl"
    _write(path, 200, checkpoint_events=40)
    events = _events(path)
    assert [e["seq"] for e in events] == list(range(1, 207))  # 200, 5 checkpoints, the seal
    checkpoints = [e for e in events if e["type"] == "audit.checkpoint"]
    assert [c["seq"] for c in checkpoints] == [41, 82, 123, 164, 205]
    first = checkpoints[0]
    assert (first["code"], first["last_seq"], first["last_hash"], first["events"]) == (
        "JP6000", 40, events[39]["hash"], 40)
    assert (first["checkpoint_events"], first["checkpoint_interval_s"]) == (40, 60.0)
    sealed = events[-1]
    assert sealed["type"] == "audit.sealed" and sealed["code"] == "JP6001"
    assert (sealed["last_seq"], sealed["last_hash"], sealed["prev_hash"]) == (205, events[-2]["hash"], events[-2]["hash"])
    assert (sealed["events"], sealed["checkpoints"], sealed["reason"], sealed["dropped"]) == (
        200, 5, "close", {"file:audit.jsonl": 0})
    assert (sealed["user"], sealed["session_id"], sealed["groups"]) == (None, None, [])
    for event in (first, sealed):
        jsonschema.validate(event, SCHEMA)
    report = verify(events)
    assert report.intact and not report.warnings
    assert report.chain_status("web-1:4242") == "web-1:4242: seq 1..206: intact: sealed"


def test_a_sealed_file_verifies_as_intact(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, 20)
    code, out = _verify(capsys, str(path))
    assert code == 0, out
    assert "web-1:4242: seq 1..21: intact: sealed" in out
    assert "OK: 21 events in 1 chain(s), all sealed" in out


def test_the_last_50_lines_cut_is_truncation_not_ok(tmp_path, capsys):
    """What `audit verify` said OK to before seals: a hash chain cannot see a cut tail."""
    path = tmp_path / "audit.jsonl"
    _write(path, 200, checkpoint_events=40)
    lines = path.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-50]) + "\n")  # seq 1..156: the checkpoint at 123 is the last left
    report = verify(_events(cut))
    assert report.ok and not report.intact  # no break in what is left ...
    (tail,) = report.open  # ... but it ends without a seal
    assert (tail.last_seq, tail.checkpoint_seq, tail.after_checkpoint) == (156, 123, 33)
    code, out = _verify(capsys, str(cut))
    assert code == 3, out
    assert ("web-1:4242: seq 1..156: ends without a seal: truncated or crashed "
            "(last checkpoint at seq 123, 33 event(s) after it)") in out
    assert out.splitlines()[-1].startswith("OPEN: 1 chain(s) end without a seal")
    # a running proxy's file: accepted when asked, and the output says it is open
    code, out = _verify(capsys, "--allow-open", str(cut))
    assert code == 0 and "OK: 156 events in 1 chain(s); 1 open (accepted with --allow-open" in out
    assert "ends without a seal" in out


def test_a_cut_without_any_checkpoint_left_says_so(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, 30)
    lines = path.read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:10]) + "\n")
    code, out = _verify(capsys, str(tmp_path / "cut.jsonl"))
    assert code == 3 and "ends without a seal: truncated or crashed (no checkpoint: 10 event(s), none covered)" in out


def test_checkpoints_by_time_only_while_events_come(tmp_path):
    memory = MemorySink()
    audit = AuditEmitter([memory], instance="t:1", checkpoint_interval_s=0.1, checkpoint_events=0)
    _deny(audit, 1)
    _deny(audit, 2)
    assert eventually(lambda: memory.events[-1]["type"] == "audit.checkpoint", timeout_s=5)
    checkpoint = memory.events[-1]
    assert checkpoint["last_seq"] == checkpoint["seq"] - 1 and checkpoint["events"] == 2
    written = len(memory.events)
    asyncio.run(asyncio.sleep(0.5))  # idle: nothing new to cover, no more checkpoints
    assert len(memory.events) == written
    audit.close()
    assert [e["type"] for e in memory.events][-2:] == ["audit.checkpoint", "audit.sealed"]
    assert verify(memory.events).intact


def test_audit_config_takes_the_checkpoint_settings():
    cfg = AuditConfig(checkpoint_interval_s=10, checkpoint_events=0)
    assert (cfg.checkpoint_interval_s, cfg.checkpoint_events) == (10, 0)
    assert (AuditConfig().checkpoint_interval_s, AuditConfig().checkpoint_events) == (60.0, 10_000)
    with pytest.raises(ValueError):
        AuditConfig(checkpoint_interval_s=-1)


# -- nothing answered is lost at close or exit ------------------------------------------------------


def test_events_emitted_just_before_close_are_all_written_synced_and_sealed(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    synced: list[int] = []
    real_sync = os.fdatasync

    def fdatasync(fd: int) -> None:
        real_sync(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(sinks.os, "fdatasync", fdatasync)
    audit = AuditEmitter([FileSink(path, sync_interval_s=3600)], instance="t:1", mode="best_effort")

    async def answered() -> None:
        for i in range(300):  # statement ends: emitted at the end of the loop turn
            audit.emit_soon(EventType.STATEMENT_COMPLETED, SESSION, {"statement": f"SELECT {i}", "rows": 1})
        for i in range(300):
            _deny(audit, i)  # through the writer thread's queue
        for i in range(300, 310):
            audit.emit_soon(EventType.STATEMENT_COMPLETED, SESSION, {"statement": f"SELECT {i}", "rows": 1})
        audit.close()  # still in the same loop turn: nothing flushed, nothing run

    asyncio.run(answered())
    events = _events(path)
    assert len(events) == 611 and events[-1]["type"] == "audit.sealed" and events[-1]["events"] == 610
    assert [e.get("statement") for e in events[600:610]] == [f"SELECT {i}" for i in range(300, 310)]
    assert verify(events).intact
    assert synced and synced[-1] == path.stat().st_size  # the whole file reached the disk before close returned
    audit.close()  # again: nothing more
    assert len(_events(path)) == 611


def test_after_close_events_are_refused_never_written_after_the_seal(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = _write(path, 3)
    _deny(audit, 99)
    with pytest.raises(AuditUnavailable, match="closed"):
        asyncio.run(audit.emit_durable(EventType.STATEMENT_ALLOWED, SESSION, statement="SELECT 1"))
    assert audit.checkpoint() is None
    assert [e["type"] for e in _events(path)][-1] == "audit.sealed" and len(_events(path)) == 4
    assert audit.refused == 1 and audit.closed


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from proxy.audit.events import AuditEmitter, EventType, FileSink, SessionInfo

    path, how = Path(sys.argv[1]), sys.argv[2]
    audit = AuditEmitter([FileSink(path)], instance="crash:1", checkpoint_events=10)
    session = SessionInfo("s1", "127.0.0.1:1", "dev")
    for i in range(25):
        audit.emit(EventType.STATEMENT_DENIED, session, statement=f"SELECT {i}", decision="deny",
                   reason_code="missing_grant", tables=["hr_prod.salary"])
    if how == "kill":  # a crash Python does not see: written so far (the page cache), never sealed
        audit.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("an unhandled error: the atexit handler still seals")
""")


def _child(path: Path, how: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", _CHILD, str(path), how], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_an_exit_python_still_runs_seals_what_was_emitted(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    done = _child(path, "raise")
    assert done.returncode == 1 and "RuntimeError" in done.stderr
    events = _events(path)
    assert [e["seq"] for e in events] == list(range(1, 29))  # 25, checkpoints at 11 and 22, the seal
    assert (events[-1]["type"], events[-1]["reason"], events[-1]["events"]) == ("audit.sealed", "exit", 25)
    code, out = _verify(capsys, str(path))
    assert code == 0 and "crash:1: seq 1..28: intact: sealed (exit)" in out


def test_a_killed_proxy_ends_without_a_seal_with_its_checkpoint(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    done = _child(path, "kill")
    assert done.returncode == -signal.SIGKILL
    code, out = _verify(capsys, str(path))
    assert code == 3, out
    assert ("crash:1: seq 1..27: ends without a seal: truncated or crashed "
            "(last checkpoint at seq 22, 5 event(s) after it)") in out


# -- restarts: segments of one proxy_instance -------------------------------------------------------


def test_sealed_then_a_new_segment_is_a_restart(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, 5, "web-1:1")  # a container: pid 1 again after the restart
    _write(path, 3, "web-1:1")
    report = verify(_events(path))
    assert report.intact and not report.warnings
    assert [(s.first_seq, s.last_seq, s.sealed) for s in report.segments["web-1:1"]] == [(1, 6, True), (1, 4, True)]
    code, out = _verify(capsys, str(path))
    assert code == 0 and "web-1:1: seq 1..6, then seq 1..4 (2 segments): intact: sealed" in out


def test_unsealed_then_a_new_segment_is_a_crash_warning_not_tampering(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, 25, "web-1:1", close=False, checkpoint_events=10)  # never closed: killed
    _write(path, 3, "web-1:1")
    report = verify(_events(path))
    assert report.ok and report.intact  # no break, and the chain ends sealed ...
    (crash,) = report.warnings  # ... after a segment that did not
    assert (crash.kind, crash.seq) == ("crashed", 27)
    assert "last checkpoint at seq 22, 5 event(s) after it" in crash.detail
    code, out = _verify(capsys, str(path))
    assert code == 0, out
    assert "CRASHED      web-1:1 seq 27" in out and "1 crashed segment(s) (warning)" in out


def test_a_duplicated_first_event_is_not_a_new_segment(tmp_path):
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    lines = path.read_text().splitlines()
    report = verify(json.loads(line) for line in [lines[0], *lines])
    assert [p.kind for p in report.problems] == ["duplicate"] and len(report.segments["web-1:4242"]) == 1


# -- several chains, several files ------------------------------------------------------------------


def test_each_chain_of_one_file_is_judged_on_its_own(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"  # two workers (or replicas) appending to one file
    a = AuditEmitter([FileSink(path)], instance="web-1:100")
    b = AuditEmitter([FileSink(path)], instance="web-1:101", close_at_exit=False)
    for i in range(10):
        _deny(a, i)
        _deny(b, i)
        assert a.flush() and b.flush()
    a.close()
    assert b.flush()  # b still runs
    code, out = _verify(capsys, str(path))
    assert code == 3
    assert "web-1:100: seq 1..11: intact: sealed" in out
    assert "web-1:101: seq 1..10: ends without a seal" in out
    code, out = _verify(capsys, "--allow-open", str(path))
    assert code == 0 and "1 open" in out


def test_rotated_files_verify_together_and_the_oldest_alone_is_open(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    audit = AuditEmitter([FileSink(path, max_bytes=4000, backups=50)], instance="t:1")
    for i in range(40):
        _deny(audit, i)
        audit.flush()  # one event per batch: rotation between batches
    audit.close()
    files = sorted(tmp_path.glob("audit.jsonl*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    assert len(files) > 3
    code, out = _verify(capsys, *map(str, files))
    assert code == 0 and "t:1: seq 1..41: intact: sealed" in out
    code, out = _verify(capsys, str(files[0]))
    assert code == 3 and "ends without a seal" in out  # the rest is in the newer files
    code, out = _verify(capsys, str(files[-1]))
    assert code == 1 and "MISSING" in out and "a rotated file?" in out


# -- tampering is still a break -----------------------------------------------------------------------


def test_tampering_with_a_sealed_file_is_a_break(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, 10)
    lines = path.read_text().splitlines()

    def check(tampered: list[str]) -> str:
        bad = tmp_path / "tampered.jsonl"
        bad.write_text("\n".join(tampered) + "\n")
        code, out = _verify(capsys, str(bad))
        assert code == 1, out
        assert out.splitlines()[-1].startswith("BROKEN:")
        return out

    edited = list(lines)
    event = json.loads(edited[3])
    event["user"] = "somebody-else"
    edited[3] = json.dumps(event)
    out = check(edited)
    assert "EDITED       web-1:4242 seq 4" in out and "web-1:4242: seq 1..11: broken at seq 4" in out
    assert "MISSING" in check(lines[:4] + lines[5:])
    # an event forged after the seal, chained to it
    sealed = json.loads(lines[-1])
    forged = json.loads(lines[0])
    body = {k: v for k, v in forged.items() if k not in ("hash", "seq", "prev_hash")}
    assert "AFTER_SEAL" in check([*lines, seal(body, sealed["seq"] + 1, sealed["hash"])])
    # the tail cut and the chain redone by a forger who knows the scheme: the seal's count shows it
    redone, prev = [], ""
    for number, line in enumerate([*lines[:4], *lines[6:]], 1):
        event = json.loads(line)
        body = {k: v for k, v in event.items() if k not in ("hash", "seq", "prev_hash")}
        redone.append(seal(body, number, prev))
        prev = json.loads(redone[-1])["hash"]
    assert "the audit.sealed counts 10 event(s) before it, the segment has 8" in check(redone)


def test_a_line_torn_by_a_crash_then_a_restart(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    _write(path, 5, "web-1:1", close=False)  # killed in the middle of a write:
    with path.open("a") as f:
        f.write('{"client_addr":"127.0.0.1:1","client_name":nu')
    code, out = _verify(capsys, str(path))
    assert code == 3 and f"TORN         {path}:6: an incomplete line" in out and "ends without a seal" in out
    _write(path, 2, "web-1:1")  # restarted: its first event on a line of its own
    assert path.read_text().splitlines()[5].endswith("nu")
    code, out = _verify(capsys, str(path))
    assert code == 0, out
    assert "TORN" in out and "CRASHED      web-1:1 seq 5" in out and "seq 1..5, then seq 1..3 (2 segments): intact" in out


def test_an_empty_file_is_not_ok_unless_open_is_allowed(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    code, out = _verify(capsys, str(path))
    assert code == 3 and out.startswith("EMPTY: no events")
    assert _verify(capsys, "--allow-open", str(path))[0] == 0

"""A model of one prepared statement's long data, to check the audit trail against.

The protocol: SEND_LONG_DATA for a parameter number below the statement's count marks that
parameter as sent (its value is not in the next EXECUTE's packet); EXECUTE and a successful
RESET clear the marks. The proxy must report an EXECUTE's values as `params_long_data` exactly
when marks were set, and decode them from the packet otherwise.

Sequences are lists of command payloads (command byte first), so the same runner serves the
fuzz tests and the regression corpus (tests/corpus/stmt_session/*.bin: framed packets, where a
statement id of 0, never one MariaDB hands out, stands for the statement the runner prepared)."""

from __future__ import annotations

import struct

from proxy.mysql import wire
from tests.fuzz.oracle import assert_no_internal_errors
from tests.fuzz.wire_client import FuzzClient

SQL = (b"SELECT id, first_name FROM hr_prod.employee "
       b"WHERE id = ? OR first_name = ? OR hired_on = ? OR shift_start = ?")
PLACEHOLDER_ID = b"\x00\x00\x00\x00"
_STMT_COMMANDS = (wire.COM_STMT_EXECUTE, wire.COM_STMT_SEND_LONG_DATA, wire.COM_STMT_CLOSE, wire.COM_STMT_RESET,
                  wire.COM_STMT_FETCH)


def session_id(proxy, client: FuzzClient) -> str:
    """The audit session of `client`."""
    starts = [e for e in proxy.events
              if e["type"] == "session.start" and e.get("connection_id") == client.connection_id]
    return starts[-1]["session_id"]


def execute_events(proxy, session: str) -> list[dict]:
    return [e for e in proxy.events if e.get("session_id") == session and e.get("command") == "COM_STMT_EXECUTE"
            and e["type"] in ("statement.completed", "statement.failed")]


def bind(payload: bytes, stmt_id: int) -> bytes:
    """A corpus payload with its placeholder statement id replaced by the real one."""
    if payload[:1] and payload[0] in _STMT_COMMANDS and payload[1:5] == PLACEHOLDER_ID:
        return payload[:1] + struct.pack("<I", stmt_id) + payload[5:]
    return payload


def split_packets(stream: bytes) -> list[bytes]:
    """Framed packets → their payloads (a corpus file; a truncated last packet is kept whole)."""
    out, pos = [], 0
    while pos + 4 <= len(stream):
        n = int.from_bytes(stream[pos : pos + 3], "little")
        out.append(stream[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def run(proxy, payloads: list[bytes]) -> None:
    """Log in, prepare SQL, send `payloads` (one exchange each, sentinel behind), then check the
    answers and the EXECUTE events against the model."""
    client = FuzzClient.logged_in(proxy)
    try:
        session = session_id(proxy, client)
        stmt_id, count = client.prepare(SQL)
        marks: set[int] = set()
        expected: list[list[int] | None] = []  # per audited EXECUTE: the long data it reports
        for payload in (bind(p, stmt_id) for p in payloads):
            ex = client.exchange(payload)
            assert_no_internal_errors(ex.packets)
            assert not ex.closed, ex
            command, same_stmt = payload[:1], payload[1:5] == struct.pack("<I", stmt_id)
            if command == bytes((wire.COM_STMT_SEND_LONG_DATA,)) and same_stmt and len(payload) >= 7:
                assert not ex.packets, ex  # the protocol has no answer to it
                param = int.from_bytes(payload[5:7], "little")
                if param < count:
                    marks.add(param)
            elif command == bytes((wire.COM_STMT_EXECUTE,)) and same_stmt and len(payload) >= 10:
                assert ex.packets, ex
                expected.append(sorted(marks) or None)
                marks.clear()
            elif command == bytes((wire.COM_STMT_RESET,)) and same_stmt:
                if ex.packets and ex.packets[0][:1] == b"\x00":
                    marks.clear()
        events = execute_events(proxy, session)
        assert [e.get("params_long_data") for e in events] == expected
        assert all((e["params"] is None) == ("params_long_data" in e) for e in events)
    finally:
        client.close_quietly()

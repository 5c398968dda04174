"""Small pure helpers over MySQL wire bytes shared by the client and upstream sides."""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_PAYLOAD = 0xFFFFFF

# Commands (first payload byte)
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PROCESS_INFO = 0x0A
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F

COMMAND_NAMES = {
    COM_QUIT: "COM_QUIT",
    COM_INIT_DB: "COM_INIT_DB",
    COM_QUERY: "COM_QUERY",
    COM_FIELD_LIST: "COM_FIELD_LIST",
    COM_STATISTICS: "COM_STATISTICS",
    COM_PROCESS_INFO: "COM_PROCESS_INFO",
    COM_PROCESS_KILL: "COM_PROCESS_KILL",
    COM_DEBUG: "COM_DEBUG",
    COM_PING: "COM_PING",
    COM_CHANGE_USER: "COM_CHANGE_USER",
    COM_STMT_PREPARE: "COM_STMT_PREPARE",
    COM_STMT_EXECUTE: "COM_STMT_EXECUTE",
    COM_STMT_SEND_LONG_DATA: "COM_STMT_SEND_LONG_DATA",
    COM_STMT_CLOSE: "COM_STMT_CLOSE",
    COM_STMT_RESET: "COM_STMT_RESET",
    COM_SET_OPTION: "COM_SET_OPTION",
    COM_STMT_FETCH: "COM_STMT_FETCH",
    COM_RESET_CONNECTION: "COM_RESET_CONNECTION",
}

# Server status flags
SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040
SERVER_STATUS_LAST_ROW_SENT = 0x0080
SERVER_STATUS_NO_BACKSLASH_ESCAPES = 0x0200
SERVER_STATUS_IN_TRANS_READONLY = 0x2000
# The bits that describe the session rather than one response: what a packet the proxy builds
# itself (greeting, OK after login, reset, KILL) carries over from the upstream session.
SESSION_STATUS_BITS = (SERVER_STATUS_IN_TRANS | SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_NO_BACKSLASH_ESCAPES
                       | SERVER_STATUS_IN_TRANS_READONLY)

_U16 = struct.Struct("<H")


def read_lenenc(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Length-encoded integer at `pos` (>= 0) → (value, next position). Raises ValueError, and
    nothing else, when it is truncated (its prefix or its bytes past the end of `data`) or its
    prefix is not a length (0xFB NULL, 0xFF): a short read must never pass for a smaller number,
    since callers take the value as how many bytes follow. Hot on the relay: the one-byte case
    costs a bounds-checked index and a compare, as before."""
    try:
        first = data[pos]
    except IndexError:
        raise ValueError(f"truncated length-encoded integer at {pos}") from None
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        end = pos + 3
    elif first == 0xFD:
        end = pos + 4
    elif first == 0xFE:
        end = pos + 9
    else:
        raise ValueError(f"invalid length-encoded integer prefix 0x{first:02x}")
    if end > len(data):
        raise ValueError(f"truncated length-encoded integer at {pos}: needs {end - pos} bytes, {len(data) - pos} left")
    if first == 0xFC:
        return data[pos + 1] | (data[pos + 2] << 8), end
    return int.from_bytes(data[pos + 1 : end], "little"), end


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def frame(payload: bytes, seq: int = 0) -> bytes:
    """One logical payload → wire packets (split at 16 MiB), starting at sequence `seq`."""
    out = bytearray()
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_PAYLOAD]
        out += len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,))
        out += chunk
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_PAYLOAD:
            return bytes(out)


@dataclass(frozen=True)
class OkInfo:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int


def parse_ok(payload: bytes | bytearray | memoryview) -> OkInfo:
    """An OK packet (0x00 or, as result terminator with DEPRECATE_EOF, 0xFE). ValueError when
    its length-encoded counts are truncated; the status and warnings are optional (as in
    pre-4.1 OKs)."""
    affected, pos = read_lenenc(payload, 1)
    last_id, pos = read_lenenc(payload, pos)
    status, warnings = (0, 0)
    if len(payload) >= pos + 4:
        status = _U16.unpack_from(payload, pos)[0]
        warnings = _U16.unpack_from(payload, pos + 2)[0]
    return OkInfo(affected, last_id, status, warnings)


def parse_eof(payload: bytes | bytearray | memoryview) -> tuple[int, int]:
    """An EOF packet → (warnings, status)."""
    if len(payload) >= 5:
        return _U16.unpack_from(payload, 1)[0], _U16.unpack_from(payload, 3)[0]
    return 0, 0


@dataclass(frozen=True)
class ErrInfo:
    code: int
    sqlstate: str
    message: str


def parse_err(payload: bytes | bytearray | memoryview) -> ErrInfo:
    """An ERR packet; ValueError when it is too short to hold its code."""
    data = bytes(payload)
    if len(data) < 3:
        raise ValueError(f"truncated ERR packet ({len(data)} bytes)")
    code = _U16.unpack_from(data, 1)[0]
    if len(data) > 3 and data[3:4] == b"#":
        sqlstate = data[4:9].decode("ascii", "replace")
        message = data[9:].decode("utf-8", "replace")
    else:
        sqlstate, message = "HY000", data[3:].decode("utf-8", "replace")
    return ErrInfo(code, sqlstate, message)


def make_ok(status: int, affected_rows: int = 0, last_insert_id: int = 0, warnings: int = 0) -> bytes:
    """An OK packet (protocol 4.1, which the proxy requires of clients)."""
    return (b"\x00" + lenenc_int(affected_rows) + lenenc_int(last_insert_id)
            + _U16.pack(status & 0xFFFF) + _U16.pack(warnings & 0xFFFF))


def make_err(code: int, sqlstate: str, message: str) -> bytes:
    msg = message.encode("utf-8", "replace")[:512]
    return b"\xff" + _U16.pack(code) + b"#" + sqlstate.encode("ascii")[:5].ljust(5, b"0") + msg

"""COM_STMT_EXECUTE parameters decoded for the audit trail: every type family built by hand,
types remembered between executes, the NULL bitmap, cutting, hostile packets (which must never
raise, loop or allocate by a claimed length) and the packets a real client sends."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import struct
import threading
import time
from decimal import Decimal
from typing import Any

import mysql.connector
import pytest
from hypothesis import given, settings, strategies as st
from pymysql.constants import FIELD_TYPE as T

from proxy.audit import params as params_module
from proxy.audit.params import UNDECODABLE, UNKNOWN, decode_execute_params
from proxy.mysql.wire import COM_STMT_EXECUTE, lenenc_int

U = 0x80  # the unsigned flag


# -- building payloads by hand -----------------------------------------------------------------


def lenenc_bytes(raw: bytes) -> bytes:
    return lenenc_int(len(raw)) + raw


def execute(params: list[tuple[int, int, bytes | None]], *, bound: bool = True, stmt_id: int = 7,
            flags: int = 0, iterations: int = 1) -> bytes:
    """A COM_STMT_EXECUTE payload (after the command byte): (type, flags, encoded value or None)."""
    out = struct.pack("<IBI", stmt_id, flags, iterations)
    if not params:
        return out
    bitmap = bytearray((len(params) + 7) // 8)
    for i, (_, _, value) in enumerate(params):
        if value is None:
            bitmap[i // 8] |= 1 << (i % 8)
    out += bytes(bitmap) + (b"\x01" if bound else b"\x00")
    if bound:
        out += b"".join(bytes((t, f)) for t, f, _ in params)
    return out + b"".join(v for _, _, v in params if v is not None)


def code(ftype: int, flags: int = 0) -> int:
    return ftype | flags << 8


def decode(params: list[tuple[int, int, bytes | None]], **kw: Any) -> list[Any]:
    values, types = decode_execute_params(execute(params), len(params), None, **kw)
    assert types == tuple(code(t, f) for t, f, _ in params)
    return values


def date_bytes(*parts: int) -> bytes:
    """DATE/DATETIME encoding of (year, month, day[, hour, minute, second[, microsecond]])."""
    body = b""
    if parts:
        body = struct.pack("<HBB", *parts[:3])
    if len(parts) > 3:
        body += bytes(parts[3:6])
    if len(parts) > 6:
        body += struct.pack("<I", parts[6])
    return bytes((len(body),)) + body


def time_bytes(negative: bool, days: int, h: int, m: int, s: int, micro: int | None = None) -> bytes:
    body = struct.pack("<BIBBB", negative, days, h, m, s) + (b"" if micro is None else struct.pack("<I", micro))
    return bytes((len(body),)) + body


# -- every type family -------------------------------------------------------------------------

FAMILIES: list[tuple[str, int, int, bytes, Any]] = [
    # integers, signed and unsigned
    ("tiny", T.TINY, 0, b"\xff", -1),
    ("tiny-unsigned", T.TINY, U, b"\xff", 255),
    ("short", T.SHORT, 0, struct.pack("<h", -32768), -32768),
    ("short-unsigned", T.SHORT, U, b"\xff\xff", 65535),
    ("year", T.YEAR, U, struct.pack("<H", 2024), 2024),
    ("long", T.LONG, 0, struct.pack("<i", -123456789), -123456789),
    ("long-unsigned", T.LONG, U, b"\xff\xff\xff\xff", 4294967295),
    ("int24", T.INT24, 0, struct.pack("<i", -8388608), -8388608),
    ("longlong", T.LONGLONG, 0, struct.pack("<q", -(2**63)), -(2**63)),
    ("longlong-unsigned", T.LONGLONG, U, b"\xff" * 8, 2**64 - 1),
    # floats
    ("float", T.FLOAT, 0, struct.pack("<f", 1.1), 1.1),
    ("float-max", T.FLOAT, 0, b"\xff\xff\x7f\x7f", 3.4028235e38),
    ("double", T.DOUBLE, 0, struct.pack("<d", -0.1), -0.1),
    ("double-nan", T.DOUBLE, 0, struct.pack("<d", math.nan), "NaN"),
    ("double-inf", T.DOUBLE, 0, struct.pack("<d", math.inf), "Infinity"),
    ("float-minus-inf", T.FLOAT, 0, struct.pack("<f", -math.inf), "-Infinity"),
    ("float-nan", T.FLOAT, 0, struct.pack("<f", math.nan), "NaN"),
    # decimals
    ("decimal", T.DECIMAL, 0, lenenc_bytes(b"-12345.6789"), "-12345.6789"),
    ("newdecimal", T.NEWDECIMAL, 0, lenenc_bytes(b"1e-10"), "1e-10"),
    # text
    ("varchar", T.VARCHAR, 0, lenenc_bytes("héllo".encode()), "héllo"),
    ("var_string", T.VAR_STRING, 0, lenenc_bytes("日本語 ✓".encode()), "日本語 ✓"),
    ("string", T.STRING, 0, lenenc_bytes(b"plain"), "plain"),
    ("string-empty", T.STRING, 0, lenenc_bytes(b""), ""),
    ("string-not-utf8", T.STRING, 0, lenenc_bytes(b"caf\xe9"), "caf\ufffd"),
    ("enum", T.ENUM, 0, lenenc_bytes(b"red"), "red"),
    ("set", T.SET, 0, lenenc_bytes(b"a,b"), "a,b"),
    ("json", T.JSON, 0, lenenc_bytes(b'{"k": [1, 2]}'), '{"k": [1, 2]}'),
    # blobs: text when UTF-8, hex otherwise; GEOMETRY and BIT always hex
    ("blob-text", T.BLOB, 0, lenenc_bytes("ünïcode".encode()), "ünïcode"),
    ("blob-binary", T.BLOB, 0, lenenc_bytes(b"\x00\xff\x10"), "0x00ff10"),
    ("tiny_blob", T.TINY_BLOB, 0, lenenc_bytes(b"\x80"), "0x80"),
    ("medium_blob", T.MEDIUM_BLOB, 0, lenenc_bytes(b"ok"), "ok"),
    ("long_blob", T.LONG_BLOB, 0, lenenc_bytes(b"\xc3"), "0xc3"),
    ("geometry", T.GEOMETRY, 0, lenenc_bytes(b"\x00\x00\x00\x00\x01\x01\x00\x00\x00"), "0x000000000101000000"),
    ("bit", T.BIT, 0, lenenc_bytes(b"\x05"), "0x05"),
    # dates and times
    ("date", T.DATE, 0, date_bytes(2024, 2, 29), "2024-02-29"),
    ("date-zero", T.DATE, 0, date_bytes(), "0000-00-00"),
    ("newdate", T.NEWDATE, 0, date_bytes(1999, 12, 31), "1999-12-31"),
    ("datetime-zero", T.DATETIME, 0, date_bytes(), "0000-00-00 00:00:00"),
    ("datetime-date-only", T.DATETIME, 0, date_bytes(2024, 1, 2), "2024-01-02"),
    ("datetime", T.DATETIME, 0, date_bytes(2024, 1, 2, 3, 4, 5), "2024-01-02 03:04:05"),
    ("datetime-micro", T.DATETIME, 0, date_bytes(2024, 1, 2, 3, 4, 5, 678), "2024-01-02 03:04:05.000678"),
    ("timestamp", T.TIMESTAMP, 0, date_bytes(1970, 1, 1, 0, 0, 1, 999999), "1970-01-01 00:00:01.999999"),
    ("time-zero", T.TIME, 0, b"\x00", "00:00:00"),
    ("time", T.TIME, 0, time_bytes(False, 0, 12, 34, 56), "12:34:56"),
    ("time-days", T.TIME, 0, time_bytes(False, 3, 1, 2, 3), "3 01:02:03"),
    ("time-negative-micro", T.TIME, 0, time_bytes(True, 0, 0, 0, 1, 500), "-00:00:01.000500"),
    ("time-negative-days", T.TIME, 0, time_bytes(True, 34, 22, 59, 59, 999999), "-34 22:59:59.999999"),
]


@pytest.mark.parametrize("ftype,flags,raw,expected", [f[1:] for f in FAMILIES], ids=[f[0] for f in FAMILIES])
def test_each_type_family(ftype, flags, raw, expected):
    values = decode([(ftype, flags, raw)])
    assert values == [expected]
    assert type(values[0]) is type(expected)


def test_all_families_in_one_execute_and_json_stays_valid():
    params = [(t, f, raw) for _, t, f, raw, _ in FAMILIES]
    values = decode(params)
    assert values == [expected for *_, expected in FAMILIES]
    json.dumps(values, allow_nan=False, ensure_ascii=False)


def test_nulls_come_from_the_bitmap_over_several_bytes():
    params: list[tuple[int, int, bytes | None]] = []
    for i in range(19):
        params.append((T.NULL, 0, None) if i % 3 == 0 else (T.LONG, 0, struct.pack("<i", i)))
    assert decode(params) == [None if i % 3 == 0 else i for i in range(19)]
    # a NULL is a NULL whatever type is sent with it
    assert decode([(T.VAR_STRING, 0, None), (T.LONGLONG, U, None), (T.TINY, 0, b"\x01")]) == [None, None, 1]


def test_unsigned_flag_only_changes_integers():
    assert decode([(T.LONGLONG, 0, b"\xff" * 8), (T.LONGLONG, U, b"\xff" * 8)]) == [-1, 2**64 - 1]
    assert decode([(T.DOUBLE, U, struct.pack("<d", -2.5))]) == [-2.5]


def test_no_params_and_the_header_alone():
    assert decode_execute_params(execute([]), 0, None) == ([], None)
    assert decode_execute_params(execute([]), 0, (3,)) == ([], (3,))


# -- types remembered from the previous execute ------------------------------------------------


def test_types_from_the_previous_execute_are_used_when_none_are_sent():
    first = [(T.LONG, 0, struct.pack("<i", 42)), (T.VAR_STRING, 0, lenenc_bytes(b"abc")), (T.LONGLONG, U, b"\xff" * 8)]
    values, types = decode_execute_params(execute(first), 3, None)
    assert values == [42, "abc", 2**64 - 1]
    assert types == (T.LONG, T.VAR_STRING, T.LONGLONG | U << 8)

    again = [(T.LONG, 0, struct.pack("<i", -5)), (T.VAR_STRING, 0, None), (T.LONGLONG, U, b"\x01" + b"\x00" * 7)]
    values, kept = decode_execute_params(execute(again, bound=False), 3, types)
    assert values == [-5, None, 1]
    assert kept == types

    # types sent again replace the remembered ones
    rebound = [(T.DOUBLE, 0, struct.pack("<d", 0.5)), (T.TINY, 0, b"\x02"), (T.STRING, 0, lenenc_bytes(b"x"))]
    values, new = decode_execute_params(execute(rebound), 3, types)
    assert values == [0.5, 2, "x"]
    assert new == (T.DOUBLE, T.TINY, T.STRING)


def test_no_types_ever_sent_gives_unknown_markers_but_keeps_nulls():
    params = [(T.LONG, 0, struct.pack("<i", 1)), (T.LONG, 0, None), (T.STRING, 0, lenenc_bytes(b"s"))]
    assert decode_execute_params(execute(params, bound=False), 3, None) == ([UNKNOWN, None, UNKNOWN], None)


def test_remembered_types_of_another_length_are_not_trusted():
    payload = execute([(T.TINY, 0, b"\x01"), (T.TINY, 0, b"\x02")], bound=False)
    assert decode_execute_params(payload, 2, (T.TINY,)) == ([UNDECODABLE], (T.TINY,))


def test_any_non_zero_bound_flag_means_types_follow_like_the_server():
    payload = bytearray(execute([(T.TINY, 0, b"\x07")]))
    payload[10] = 0x02  # the new_params_bound_flag, after the 1-byte bitmap
    assert decode_execute_params(bytes(payload), 1, None) == ([7], (T.TINY,))


def test_iteration_count_and_cursor_flags_do_not_hide_the_params():
    """MariaDB reads indicators only in COM_STMT_BULK_EXECUTE: these do not change the layout."""
    params = [(T.LONG, 0, struct.pack("<i", 42))]
    for flags, iterations in [(0x01, 1), (0x04, 1), (0, 0), (0, 2), (0x80, 0xFFFFFFFF)]:
        values, _ = decode_execute_params(execute(params, flags=flags, iterations=iterations), 1, None)
        assert values == [42]


# -- cutting long values -----------------------------------------------------------------------


def test_long_values_are_cut_and_say_how_long_they_were():
    text = "é" * 300
    assert decode([(T.VAR_STRING, 0, lenenc_bytes(text.encode()))]) == ["é" * 256 + "…(300 chars)"]
    assert decode([(T.VAR_STRING, 0, lenenc_bytes(b"a" * 256))]) == ["a" * 256]  # exactly the limit
    assert decode([(T.STRING, 0, lenenc_bytes(b"abcdef"))], max_value_chars=4) == ["abcd…(6 chars)"]


def test_long_binary_is_cut_in_hex():
    raw = bytes(range(256)) * 400  # 102400 bytes: a 3-byte length (0xFD prefix)
    [value] = decode([(T.BLOB, 0, lenenc_bytes(raw))], max_value_chars=10)
    assert value == "0x00010203…(204802 chars)"
    [value] = decode([(T.GEOMETRY, 0, lenenc_bytes(b"\x01\x02"))], max_value_chars=3)
    assert value == "0x0…(6 chars)"


def test_cut_applies_to_decimals_and_lengths_in_each_lenenc_form():
    for n in (250, 251, 65535, 65536, 1 << 24):
        raw = b"7" * n
        [value] = decode([(T.NEWDECIMAL, 0, lenenc_bytes(raw))], max_value_chars=5)
        assert value == f"77777…({n} chars)"
    eight_byte_form = b"\xfe" + (300).to_bytes(8, "little") + b"z" * 300
    assert decode([(T.STRING, 0, eight_byte_form)], max_value_chars=2) == ["zz…(300 chars)"]


# -- unexpected input: values so far, then the marker ----------------------------------------------


def undecodable_after(payload: bytes, count: int, previous: tuple[int, ...] | None = None) -> list[Any]:
    values, _ = decode_execute_params(payload, count, previous)
    assert values[-1] == UNDECODABLE
    return values[:-1]


def test_unknown_type_stops_there():
    params = [(T.TINY, 0, b"\x01"), (0x42, 0, b"\x00"), (T.TINY, 0, b"\x03")]
    assert undecodable_after(execute(params), 3) == [1]
    # internal types never sent by clients (TIMESTAMP2 = 17) and stray flag bits are unknown too
    assert undecodable_after(execute([(17, 0, b"\x00")]), 1) == []
    assert undecodable_after(execute([(T.TINY, 0x01, b"\x00")]), 1) == []


def test_null_type_that_is_not_null_in_the_bitmap():
    payload = struct.pack("<IBI", 1, 0, 1) + b"\x00\x01" + bytes((T.NULL, 0)) + b"\x05"
    assert undecodable_after(payload, 1) == []


def test_bad_lengths():
    assert undecodable_after(execute([(T.DATE, 0, b"\x05" + b"\x00" * 5)]), 1) == []
    assert undecodable_after(execute([(T.DATETIME, 0, b"\x0c" + b"\x00" * 12)]), 1) == []
    assert undecodable_after(execute([(T.TIME, 0, b"\x07" + b"\x00" * 7)]), 1) == []
    assert undecodable_after(execute([(T.TINY, 0, b"\x01"), (T.STRING, 0, b"\xfb")]), 2) == [1]  # NULL marker
    assert undecodable_after(execute([(T.STRING, 0, b"\xff\x00")]), 1) == []  # not a length prefix
    assert undecodable_after(execute([(T.STRING, 0, b"\x05abc")]), 1) == []  # shorter than claimed


def test_claimed_lengths_far_beyond_the_payload_are_neither_allocated_nor_read():
    started = time.perf_counter()
    for prefix in (b"\xfe" + b"\xff" * 8, b"\xfe" + (1 << 62).to_bytes(8, "little"), b"\xfd\xff\xff\xff"):
        assert undecodable_after(execute([(T.LONG_BLOB, 0, prefix + b"tiny")]), 1) == []
    assert time.perf_counter() - started < 0.5


def test_bytes_left_over_mean_something_was_misread():
    payload = execute([(T.TINY, 0, b"\x01")]) + b"\x00"
    assert undecodable_after(payload, 1) == [1]


def test_count_mismatch_and_limits():
    payload = execute([(T.TINY, 0, b"\x01"), (T.TINY, 0, b"\x02")])
    assert undecodable_after(payload, 3) == []  # the type list runs out at once
    assert undecodable_after(payload, 1) == [1]  # reads the second type as the value, then bytes are left
    started = time.perf_counter()
    assert decode_execute_params(payload, 10**12, None) == ([UNDECODABLE], None)
    assert decode_execute_params(payload, -1, (1,)) == ([UNDECODABLE], (1,))
    many = [(T.TINY, 0, b"\x01")] * 1001
    assert decode_execute_params(execute(many), 1001, None) == ([UNDECODABLE], None)
    values, _ = decode_execute_params(execute(many), 1001, None, max_params=2000)
    assert values == [1] * 1001
    assert time.perf_counter() - started < 0.5


def test_short_or_odd_payloads():
    assert decode_execute_params(b"", 1, None) == ([UNDECODABLE], None)
    assert decode_execute_params(b"\x01\x00\x00\x00\x00\x01\x00\x00\x00", 1, None) == ([UNDECODABLE], None)
    assert decode_execute_params(bytearray(execute([(T.TINY, 0, b"\x09")])), 1, None) == ([9], (T.TINY,))
    assert decode_execute_params(memoryview(execute([(T.TINY, 0, b"\x09")])), 1, None) == ([9], (T.TINY,))
    assert decode_execute_params(execute([(T.TINY, 0, b"\x09")]), 1, ("junk",)) == ([9], (T.TINY,))
    assert decode_execute_params(execute([(T.TINY, 0, b"\x09")], bound=False), 1, ("junk",)) == (
        [UNDECODABLE], ("junk",))


def test_truncation_at_every_byte_gives_a_prefix_of_the_values_then_the_marker():
    params = [(t, f, raw) for _, t, f, raw, _ in FAMILIES] + [(T.STRING, 0, None), (T.BLOB, 0, lenenc_bytes(b"z" * 300))]
    payload = execute(params)
    full, types = decode_execute_params(payload, len(params), None)
    assert UNDECODABLE not in full and len(full) == len(params)
    for cut in range(len(payload)):
        values, got_types = decode_execute_params(payload[:cut], len(params), None)
        assert values[-1] == UNDECODABLE
        assert values[:-1] == full[: len(values) - 1]
        assert got_types in (None, types)
    # the same with the types remembered instead of sent
    unbound = execute(params, bound=False)
    for cut in range(len(unbound)):
        values, got_types = decode_execute_params(unbound[:cut], len(params), types)
        assert values[-1] == UNDECODABLE and values[:-1] == full[: len(values) - 1]
        assert got_types == types


# -- random bytes: only ever _Undecodable inside, never anything outside ----------------------


def strict(payload: bytes, count: int, previous: tuple[int, ...] | None, **kw: Any) -> list[Any]:
    """The decoder without its safety net: it may raise _Undecodable and nothing else."""
    values: list[Any] = []
    try:
        params_module._decode(payload, count, params_module._State(previous), values,
                              kw.get("max_value_chars", 256), kw.get("max_params", 1000))
    except params_module._Undecodable:
        values.append(UNDECODABLE)
    return values


def check_hostile(payload: bytes, count: int, previous: tuple[int, ...] | None, limit: int) -> None:
    started = time.perf_counter()
    values, types = decode_execute_params(payload, count, previous, max_value_chars=limit)
    assert time.perf_counter() - started < 0.5
    assert isinstance(values, list) and len(values) <= max(count, 0) + 1
    assert types is previous or (isinstance(types, tuple) and len(types) == count)
    json.dumps(values, allow_nan=False)
    for v in values:
        assert v is None or type(v) in (int, float, str)
        if isinstance(v, str):  # cut, whatever the length claimed
            assert len(v) <= max(limit, len(UNDECODABLE)) + len(f"…({2 * len(payload) + 2} chars)")
    assert strict(payload, count, previous, max_value_chars=limit) == values


type_codes = st.one_of(
    st.sampled_from([t for _, t, _, _, _ in FAMILIES] + [T.NULL, 17, 0x42, 255]),
    st.integers(0, 0xFFFF),
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(-2, 40), st.one_of(st.none(), st.lists(type_codes, max_size=40).map(tuple)),
       st.integers(0, 300))
def test_random_bytes_never_raise(payload, count, previous, limit):
    check_hostile(payload, count, previous, limit)


@st.composite
def plausible_executes(draw):
    """A valid header and bitmap, types from the real families (and a few others), then random or
    half-valid value bytes: reaches far deeper into the value decoders than plain random bytes."""
    count = draw(st.integers(1, 12))
    types = draw(st.lists(st.tuples(type_codes.map(lambda c: c & 0xFF), st.sampled_from([0, U, 1])),
                          min_size=count, max_size=count))
    bitmap = draw(st.binary(min_size=(count + 7) // 8, max_size=(count + 7) // 8))
    bound = draw(st.sampled_from([b"\x00", b"\x01", b"\x03"]))
    values = draw(st.lists(st.one_of(
        st.binary(max_size=20),
        st.sampled_from([raw for *_, raw, _ in FAMILIES]),
        st.sampled_from([b"\xfc", b"\xfd", b"\xfe", b"\xfb", b"\xff", b"\xfc\xff\xff", b"\xfe" + b"\xff" * 8]),
    ), max_size=count + 2))
    payload = struct.pack("<IBI", 1, 0, 1) + bitmap + bound + b"".join(bytes(t) for t in types) + b"".join(values)
    previous = draw(st.one_of(st.none(), st.just(tuple(code(t, f) for t, f in types))))
    return payload, count, previous


@settings(max_examples=500, deadline=None)
@given(plausible_executes(), st.integers(0, 40))
def test_plausible_garbage_never_raises(case, limit):
    payload, count, previous = case
    check_hostile(payload, count, previous, limit)


# -- a real client: mysql-connector-python's packets, captured by a plaintext relay -----------------


class Relay:
    """A TCP relay (asyncio, in its own thread) from 127.0.0.1:<port> to the database, recording
    what the client sends. `done` is set once both directions of its one connection have ended."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = bytearray()
        self.done = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="params-relay", daemon=True)
        self.thread.start()
        self.server = self._call(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(self._pump(client_r, up_w, self.sent), self._pump(up_r, client_w, None),
                                 return_exceptions=True)
        finally:
            self.done.set()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None) -> None:
        try:
            while data := await reader.read(65536):
                if record is not None:
                    record += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()
        self._call(self.server.wait_closed())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def commands(stream: bytes, command: int) -> list[bytes]:
    """The payloads (after the command byte) of the client's `command` packets: the packets that
    start a command have sequence number 0 (the login's have 1 and up)."""
    out, pos = [], 0
    while pos + 4 <= len(stream):
        length, seq = int.from_bytes(stream[pos : pos + 3], "little"), stream[pos + 3]
        payload = stream[pos + 4 : pos + 4 + length]
        assert length < 0xFFFFFF and len(payload) == length
        if seq == 0 and payload[:1] == bytes((command,)):
            out.append(payload[1:])
        pos += 4 + length
    assert pos == len(stream)
    return out


LONG_TEXT = "x" * 300
# (what the client binds, what the audit shows)
ROUND_TRIP: list[tuple[Any, Any]] = [
    (42, 42),
    (-7, -7),
    (300, 300),
    (-70000, -70000),
    (-(2**63), -(2**63)),
    (2**64 - 1, 2**64 - 1),
    (0, 0),
    (3.5, 3.5),
    (-0.1, -0.1),
    (1e300, 1e300),
    (Decimal("12345.6789"), "12345.6789"),
    (Decimal("-0.000001"), "-0.000001"),
    ("héllo wörld ✓ 日本", "héllo wörld ✓ 日本"),
    ("", ""),
    (None, None),
    (b"\x00\x01bin", "\x00\x01bin"),  # the connector sends bytes as STRING: text, so...
    (b"caf\xe9", "caf\ufffd"),  # ...bytes that are not UTF-8 show replacement characters
    (datetime.date(2024, 2, 29), "2024-02-29"),
    (datetime.datetime(2024, 1, 2, 3, 4, 5, 678901), "2024-01-02 03:04:05.678901"),
    (datetime.datetime(1999, 12, 31, 23, 59, 59), "1999-12-31 23:59:59"),
    (datetime.timedelta(hours=5, minutes=6, seconds=7, microseconds=890), "05:06:07.000890"),
    (datetime.timedelta(days=2, hours=3), "2 03:00:00"),
    (datetime.time(12, 34, 56), "12:34:56"),
    (None, None),
    (LONG_TEXT, "x" * 256 + "…(300 chars)"),
    ("y" * 70000, "y" * 256 + "…(70000 chars)"),
]


def test_round_trip_with_mysql_connector_prepared_statements(mariadb, upstream_credentials):
    relay = Relay(mariadb.port)
    try:
        conn = mysql.connector.connect(
            host="127.0.0.1", port=relay.port, user=upstream_credentials.user,
            password=upstream_credentials.password, database="hr_prod", ssl_disabled=True,
            use_pure=True, autocommit=True, connection_timeout=30,
        )
        bound = tuple(v for v, _ in ROUND_TRIP)
        try:
            cur = conn.cursor(prepared=True)
            cur.execute("SELECT " + ", ".join(["?"] * len(bound)), bound)
            row = cur.fetchone()
            assert row is not None and len(row) == len(bound)  # the server took them all
            cur.execute("SELECT id FROM employee WHERE id = ? AND ? IS NULL", (42, None))
            cur.fetchall()
            cur.execute("SELECT id FROM employee WHERE id = ? AND ? IS NULL", (-1, "again"))
            cur.fetchall()
            cur.close()
        finally:
            conn.close()
        assert relay.done.wait(timeout=30), "the relay did not see the connection end"
    finally:
        relay.close()

    executes = commands(bytes(relay.sent), COM_STMT_EXECUTE)
    assert len(executes) == 3
    values, types = decode_execute_params(executes[0], len(bound), None)
    assert values == [shown for _, shown in ROUND_TRIP]
    assert types is not None and len(types) == len(bound)
    json.dumps(values, allow_nan=False)

    values, types = decode_execute_params(executes[1], 2, None)
    assert values == [42, None]
    values, _ = decode_execute_params(executes[2], 2, types)
    assert values == [-1, "again"]
    for payload, count in zip(executes, (len(bound), 2, 2)):  # the real packets, cut anywhere
        for cut in range(0, len(payload), max(1, len(payload) // 500)):
            assert decode_execute_params(payload[:cut], count, None)[0][-1] == UNDECODABLE

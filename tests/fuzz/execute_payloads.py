"""COM_STMT_EXECUTE payloads (after the command byte) for the fuzz tests: well-formed ones with
the values a decoder must find in them, and the hostile variants of each part, for the pure
decoder (test_parse_params.py) and a really prepared statement on a live proxy
(test_live_prepared.py)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import strategies as st
from pymysql.constants import FIELD_TYPE

from proxy.mysql.wire import lenenc_int

# Every type the decoder has a reading for, signed and unsigned (0x80 in the flags byte).
KNOWN_TYPES = sorted(
    {t | f for t in (FIELD_TYPE.TINY, FIELD_TYPE.SHORT, FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG, FIELD_TYPE.INT24,
                     FIELD_TYPE.YEAR, FIELD_TYPE.FLOAT, FIELD_TYPE.DOUBLE, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING,
                     FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.BLOB, FIELD_TYPE.GEOMETRY, FIELD_TYPE.DATE,
                     FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIME, FIELD_TYPE.NULL)
     for f in (0, 0x8000)}
)


def lenenc_bytes(data: bytes) -> bytes:
    return lenenc_int(len(data)) + data


def header(stmt_id: int, flags: int = 0, iterations: int = 1) -> bytes:
    """stmt_id(4) flags(1) iteration_count(4)."""
    return struct.pack("<IBI", stmt_id, flags, iterations)


@st.composite
def param(draw) -> tuple[int, bytes, Any]:
    """One parameter: (type code with flags, its encoded value, the decoder's expected reading)."""
    kind = draw(st.sampled_from(["tiny", "short", "long", "longlong", "double", "text", "blob",
                                 "date", "datetime", "time"]))
    unsigned = draw(st.booleans())
    if kind in ("tiny", "short", "long", "longlong"):
        ftype, fmt = {"tiny": (FIELD_TYPE.TINY, "b"), "short": (FIELD_TYPE.SHORT, "h"),
                      "long": (FIELD_TYPE.LONG, "i"), "longlong": (FIELD_TYPE.LONGLONG, "q")}[kind]
        fmt = fmt.upper() if unsigned else fmt
        bits = struct.calcsize(fmt) * 8
        lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        v = draw(st.integers(lo, hi))
        return ftype | (0x8000 if unsigned else 0), struct.pack("<" + fmt, v), v
    if kind == "double":
        v = draw(st.floats(allow_nan=False, allow_infinity=False))
        return FIELD_TYPE.DOUBLE, struct.pack("<d", v), v
    if kind == "text":
        s = draw(st.text(max_size=20))
        return FIELD_TYPE.VAR_STRING, lenenc_bytes(s.encode()), s
    if kind == "blob":
        raw = draw(st.binary(max_size=20))
        try:
            expected = raw.decode("utf-8")
        except UnicodeDecodeError:
            expected = "0x" + raw.hex()
        return FIELD_TYPE.BLOB, lenenc_bytes(raw), expected
    if kind == "date":
        y, m, d = draw(st.integers(0, 9999)), draw(st.integers(0, 12)), draw(st.integers(0, 31))
        return FIELD_TYPE.DATE, lenenc_bytes(struct.pack("<HBB", y, m, d)), f"{y:04d}-{m:02d}-{d:02d}"
    if kind == "datetime":
        y, hh, us = draw(st.integers(0, 9999)), draw(st.integers(0, 23)), draw(st.integers(0, 999999))
        raw = struct.pack("<HBBBBBI", y, 1, 2, hh, 4, 5, us)
        return FIELD_TYPE.DATETIME, lenenc_bytes(raw), f"{y:04d}-01-02 {hh:02d}:04:05.{us:06d}"
    neg, days, hh = draw(st.booleans()), draw(st.integers(0, 34)), draw(st.integers(0, 23))
    raw = struct.pack("<BIBBB", neg, days, hh, 30, 15)
    return FIELD_TYPE.TIME, lenenc_bytes(raw), ("-" if neg else "") + (f"{days} " if days else "") + f"{hh:02d}:30:15"


@st.composite
def executes(draw, stmt_id: int, count: int | None = None) -> tuple[bytes, int, list[Any], tuple[int, ...]]:
    """A well-formed payload that sends its types: (payload, parameter count, expected values,
    type codes). `count` fixes the number of parameters (a live statement's)."""
    n = count if count is not None else draw(st.integers(1, 12))
    nulls = [draw(st.booleans()) for _ in range(n)]
    params = [draw(param()) for _ in range(n)]
    bitmap = bytearray((n + 7) // 8)
    for i, null in enumerate(nulls):
        if null:
            bitmap[i >> 3] |= 1 << (i & 7)
    types = tuple(code for code, _, _ in params)
    body = b"".join(enc for (_, enc, _), null in zip(params, nulls, strict=True) if not null)
    payload = header(stmt_id) + bytes(bitmap) + b"\x01" + b"".join(struct.pack("<H", t) for t in types) + body
    expected = [None if null else value for (_, _, value), null in zip(params, nulls, strict=True)]
    return payload, n, expected, types


@st.composite
def hostile_executes(draw, stmt_id: int, count: int) -> bytes:
    """A payload for a real statement with `count` parameters, broken in one of the ways a
    parser can trip on: cut anywhere, a length prefix past the end, unknown or NULL types,
    a bitmap too short, bytes left over, odd flags and iteration counts, or random bytes."""
    good, _, _, _ = draw(executes(stmt_id, count))
    how = draw(st.sampled_from(["cut", "long-length", "bad-type", "short-bitmap", "extra", "flags", "random"]))
    start = len(header(stmt_id))
    if how == "cut":
        return good[: draw(st.integers(0, len(good)))]
    if how == "long-length":
        size = draw(st.sampled_from([b"\xfc\xff\xff", b"\xfd\xff\xff\xff", b"\xfe" + b"\xff" * 8, b"\xfb", b"\xff"]))
        bitmap = bytes((count + 7) // 8)
        return (header(stmt_id) + bitmap + b"\x01" + struct.pack("<H", FIELD_TYPE.VAR_STRING) * count + size
                + draw(st.binary(max_size=16)))
    if how == "bad-type":
        bitmap = bytes((count + 7) // 8)
        codes = [draw(st.integers(0, 0xFFFF)) for _ in range(count)]
        types = b"".join(struct.pack("<H", c) for c in codes)
        return header(stmt_id) + bitmap + b"\x01" + types + draw(st.binary(max_size=32))
    if how == "short-bitmap":
        return header(stmt_id) + draw(st.binary(max_size=max((count + 7) // 8 - 1, 0)))
    if how == "extra":
        return good + draw(st.binary(min_size=1, max_size=16))
    if how == "flags":
        return header(stmt_id, draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1))) + good[start:]
    return header(stmt_id) + draw(st.binary(max_size=64))

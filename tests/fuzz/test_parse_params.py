"""COM_STMT_EXECUTE parameter decoding (proxy/audit/params.py) is total: any payload, any
parameter count, any remembered types give (values, types) and never an exception; nothing is
allocated beyond the packet; what a well-formed packet holds is decoded exactly, and a
truncated one yields the values before the cut then UNDECODABLE."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import event, given, strategies as st
from pymysql.constants import FIELD_TYPE

from proxy.audit import params
from proxy.audit.params import UNDECODABLE, UNKNOWN, decode_execute_params
from tests.fuzz.execute_payloads import KNOWN_TYPES, executes, header, lenenc_bytes
from tests.fuzz.settings import fuzz

LIMIT = 64  # max_value_chars for these tests: small, so cutting is exercised
HEADER = header(1)


def _assert_shape(values: list[Any], types: tuple[int, ...] | None, param_count: int) -> None:
    assert isinstance(values, list) and len(values) <= max(param_count, 0) + 1
    assert UNDECODABLE not in values[:-1]
    for v in values:
        assert v is None or isinstance(v, (int, str)) or (isinstance(v, float) and math.isfinite(v)), v
        if isinstance(v, str):
            assert len(v) <= LIMIT + len("…(00000000000 chars)"), len(v)
    assert types is None or (isinstance(types, tuple) and all(isinstance(t, int) for t in types))


@fuzz(600)
@given(st.binary(max_size=120), st.integers(-2, 40),
       st.none() | st.lists(st.integers(0, 0xFFFF), max_size=45).map(tuple))
def test_any_payload_decodes_or_is_marked(payload: bytes, count: int, previous: tuple[int, ...] | None) -> None:
    values, types = decode_execute_params(payload, count, previous, max_value_chars=LIMIT)
    _assert_shape(values, types, count)


@fuzz(500)
@given(st.integers(1, 20), st.binary(max_size=4), st.integers(0, 255),
       st.lists(st.sampled_from(KNOWN_TYPES) | st.integers(0, 0xFFFF), max_size=22), st.binary(max_size=80))
def test_structured_garbage_decodes_or_is_marked(count, bitmap, flag, types, body) -> None:
    """Past the header, with types the decoder knows (and some it does not), random values."""
    payload = HEADER + bitmap + bytes((flag,)) + b"".join(t.to_bytes(2, "little") for t in types) + body
    values, got = decode_execute_params(payload, count, None, max_value_chars=LIMIT)
    _assert_shape(values, got, count)


@fuzz(300)
@given(st.integers(0, 40), st.binary(max_size=60), st.integers(0, 2**64 - 1))
def test_a_length_prefix_never_reaches_past_the_packet(count: int, tail: bytes, claimed: int) -> None:
    """Every parameter a string whose length prefix claims up to 2**64 bytes: marked, at once."""
    count = max(count, 1)
    payload = (HEADER + bytes((count + 7) // 8) + b"\x01" + bytes((FIELD_TYPE.VAR_STRING, 0)) * count
               + b"\xfe" + claimed.to_bytes(8, "little") + tail)
    values, _ = decode_execute_params(payload, count, None, max_value_chars=LIMIT)
    if claimed > len(tail):
        assert values == [UNDECODABLE]


@fuzz(100)
@given(st.integers(0, 3000), st.binary(max_size=40))
def test_more_parameters_than_the_limit_are_not_read(count: int, body: bytes) -> None:
    values, _ = decode_execute_params(HEADER + body, count, None, max_params=1000)
    assert len(values) <= min(count, 1000) + 1
    if count > 1000:
        assert values == [UNDECODABLE]


def _short(v: Any) -> Any:
    """What the decoder renders for a value longer than LIMIT characters."""
    return v if not isinstance(v, str) or len(v) <= LIMIT else f"{v[:LIMIT]}…({len(v)} chars)"


@fuzz(250)
@given(executes(1))
def test_well_formed_packets_decode_exactly(case) -> None:
    payload, n, expected, types = case
    values, got_types = decode_execute_params(payload, n, None, max_value_chars=LIMIT)
    assert got_types == types
    assert values == [_short(v) for v in expected]


@fuzz(120)
@given(executes(1), st.data())
def test_types_are_remembered_for_the_next_execute(case, data) -> None:
    """An execute without types (new_params_bound_flag 0) is read with the remembered ones."""
    payload, n, expected, types = case
    bitmap_end = len(HEADER) + (n + 7) // 8
    without_types = payload[:bitmap_end] + b"\x00" + payload[bitmap_end + 1 + 2 * n :]
    assert decode_execute_params(without_types, n, types, max_value_chars=LIMIT) == (
        [_short(v) for v in expected], types)
    values, _ = decode_execute_params(without_types, n, None, max_value_chars=LIMIT)
    assert values == [None if v is None else UNKNOWN for v in expected]


@fuzz(100)
@given(executes(1))
def test_every_truncation_ends_in_undecodable(case) -> None:
    payload, n, expected, _ = case
    full = [_short(v) for v in expected]
    for cut in range(len(payload)):
        values, _ = decode_execute_params(payload[:cut], n, None, max_value_chars=LIMIT)
        assert values[-1] == UNDECODABLE and values[:-1] == full[: len(values) - 1], (cut, values)


@fuzz(120)
@given(executes(1), st.binary(min_size=1, max_size=8))
def test_bytes_left_over_are_marked(case, extra: bytes) -> None:
    payload, n, expected, _ = case
    values, _ = decode_execute_params(payload + extra, n, None, max_value_chars=LIMIT)
    assert values[-1] == UNDECODABLE


@fuzz(300)
@given(st.lists(st.tuples(st.sampled_from([FIELD_TYPE.VAR_STRING, FIELD_TYPE.BLOB]),
                          st.text(max_size=12).map(str.encode) | st.binary(max_size=40)), min_size=1, max_size=6),
       st.integers(0, 8), st.integers(0, 6))
def test_past_the_budget_values_are_rendered_from_their_first_bytes(monkeypatch, values, budget, limit) -> None:
    """With the packet's decoding budget shrunk (and values longer than the few bytes that hold
    `limit` characters), each value renders as it would whole, or as the first `limit`
    characters of its bytes and its size in bytes (never for ASCII, whose rendering stays
    exact): the same characters, from a bounded amount of work."""
    n = len(values)
    payload = (HEADER + bytes((n + 7) // 8) + b"\x01" + b"".join(t.to_bytes(2, "little") for t, _ in values)
               + b"".join(lenenc_bytes(raw) for _, raw in values))
    exact, _ = decode_execute_params(payload, n, None, max_value_chars=limit)
    with monkeypatch.context() as m:
        m.setattr(params, "DECODED_BYTES_PER_PACKET", budget)
        bounded, _ = decode_execute_params(payload, n, None, max_value_chars=limit)
    assert len(bounded) == len(exact) == n
    for (_, raw), whole, cut in zip(values, exact, bounded, strict=True):
        if cut == whole:
            event("rendered as whole")
            continue
        event("rendered from its first bytes")
        match = re.fullmatch(r"(.*)…\((\d+) bytes\)", cut, re.S)
        assert match and not raw.isascii(), (raw, whole, cut)
        assert match[1] == raw.decode("utf-8", "replace")[:limit] and int(match[2]) == len(raw)


@pytest.mark.parametrize("raw", [b"\xff" * (16 << 20), "é".encode() * (8 << 20)], ids=["not-utf8", "utf8"])
def test_a_huge_value_is_not_decoded_whole(raw: bytes) -> None:
    """Found by measuring: a 16 MiB text parameter of bytes that are not UTF-8 took ~150 ms to
    decode (8 ns a byte; a 64 MiB packet ~0.6 s), all of it on the event loop, for a value the
    audit trail cuts to 256 characters. Now it is rendered from its first bytes: the result says
    so by its suffix (a rendering that decoded it whole would end in "chars)")."""
    payload = HEADER + b"\x00" + b"\x01" + FIELD_TYPE.VAR_STRING.to_bytes(2, "little") + lenenc_bytes(raw)
    [value], _ = decode_execute_params(payload, 1, None)
    assert value.endswith(f"…({len(raw)} bytes)") and len(value) == 256 + len(f"…({len(raw)} bytes)")

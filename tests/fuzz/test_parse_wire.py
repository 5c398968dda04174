"""wire.read_lenenc and the parse_* helpers are total: any bytes give a result that lies inside
them, or ValueError. Never a smaller number from a truncated length (the bug this replaced: a
0xFC prefix with one byte left read as that one byte), never IndexError or struct.error."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from proxy.mysql.wire import lenenc_int, parse_eof, parse_err, parse_ok, read_lenenc
from tests.fuzz.settings import fuzz

_WIDTH = {0xFC: 3, 0xFD: 4, 0xFE: 9}


@fuzz(1000)
@given(st.binary(max_size=24), st.integers(0, 30))
def test_read_lenenc_is_total(data: bytes, pos: int) -> None:
    """A value read from bytes that are all there, or ValueError; never past the end."""
    try:
        value, end = read_lenenc(data, pos)
    except ValueError:
        if pos < len(data) and data[pos] not in (0xFB, 0xFF):
            assert pos + _WIDTH.get(data[pos], 1) > len(data), "refused a complete integer"
        return
    assert pos < end <= len(data)
    assert end - pos == _WIDTH.get(data[pos], 1)
    assert value == (data[pos] if end - pos == 1 else int.from_bytes(data[pos + 1 : end], "little"))


@fuzz(300)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=4), st.sampled_from([bytes, bytearray, memoryview]))
def test_read_lenenc_round_trip(value: int, tail: bytes, kind) -> None:
    encoded = lenenc_int(value)
    assert read_lenenc(kind(b"\x07" + encoded + tail), 1) == (value, 1 + len(encoded))


@pytest.mark.parametrize("value", [0xFB, 0xFFFF, 0x10000, 2**24, 2**63])
def test_every_truncation_of_a_lenenc_raises(value: int) -> None:
    encoded = lenenc_int(value)
    for n in range(len(encoded)):
        with pytest.raises(ValueError):
            read_lenenc(encoded[:n], 0)


@fuzz(500)
@given(st.binary(max_size=40))
def test_parse_helpers_are_total(data: bytes) -> None:
    """The upstream's OK / EOF / ERR packets: parsed or ValueError (the relay turns that into a
    ProtocolViolation, which ends the session cleanly)."""
    for parse in (parse_ok, parse_eof, parse_err):
        try:
            parse(data)
        except ValueError:
            pass

"""The statement-id read of COM_STMT_EXECUTE / FETCH / SEND_LONG_DATA / CLOSE / RESET
(proxy/protocol/stmt_commands.py) is total: an id, or ClientError 1835 for a payload shorter than the
command's fixed part. Before, a short payload answered 1043 "Malformed packet" (the handshake's
code) and an EXECUTE or FETCH of 4 to 8 bytes was relayed to the database."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from proxy.mysql import wire
from proxy.protocol.errors import ER, ClientError
from proxy.protocol.stmt_commands import LAST_STMT_ID, STMT_HEADER_BYTES, parse_stmt_id
from tests.fuzz.settings import fuzz

COMMANDS = sorted(STMT_HEADER_BYTES)


@fuzz(500)
@given(st.sampled_from(COMMANDS), st.binary(max_size=16))
def test_parse_stmt_id_is_total(command: int, payload: bytes) -> None:
    try:
        stmt_id = parse_stmt_id(command, payload)
    except ClientError as e:
        assert e.code == ER.MALFORMED_PACKET and e.sqlstate == "HY000" and e.keep_connection
        assert len(payload) < STMT_HEADER_BYTES[command]
        return
    assert len(payload) >= STMT_HEADER_BYTES[command]
    assert stmt_id == struct.unpack_from("<I", payload)[0]


@pytest.mark.parametrize("command", COMMANDS, ids=[wire.COMMAND_NAMES[c] for c in COMMANDS])
def test_the_fixed_part_is_what_mysql_requires(command: int) -> None:
    """EXECUTE 9 bytes, FETCH 8, SEND_LONG_DATA 6, CLOSE and RESET 4 (MySQL's parse_packet)."""
    need = {wire.COM_STMT_EXECUTE: 9, wire.COM_STMT_FETCH: 8, wire.COM_STMT_SEND_LONG_DATA: 6}.get(command, 4)
    assert STMT_HEADER_BYTES[command] == need
    with pytest.raises(ClientError, match="Malformed communication packet"):
        parse_stmt_id(command, b"\xff" * (need - 1))
    assert parse_stmt_id(command, b"\xff" * need) == LAST_STMT_ID  # parsed; the session refuses it

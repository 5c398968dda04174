"""Every command byte 0x00-0x20, after login, with structured and random bodies, against a live
proxy: each gets an answer (or none, where the protocol has none), never an internal error,
and the proxy goes on serving. The session's parsers reached here: COM_INIT_DB, COM_FIELD_LIST,
COM_PROCESS_KILL (refused: 1047), COM_STMT_* ids, and whatever a body makes of COM_QUERY."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from proxy.mysql import wire
from tests.fuzz.oracle import Watch, assert_no_internal_errors
from tests.fuzz.settings import fuzz
from tests.fuzz.wire_client import Exchange, FuzzClient

ALL_COMMANDS = range(0x00, 0x21)
NO_RESPONSE = (wire.COM_STMT_SEND_LONG_DATA, wire.COM_STMT_CLOSE)  # the protocol answers nothing

# Bodies that trip parsers: empty, one byte, a short id, 0xFFFFFFFF (MariaDB's "last statement"),
# length-encoded prefixes claiming more than follows, NULs, bytes that are not UTF-8.
HOSTILE = [
    b"", b"\x00", b"\xff", b"\x01\x00", b"\xff\xff\xff", b"\xff\xff\xff\xff", b"\xff\xff\xff\xff\x00\x01\x00\x00\x00",
    b"\x00\x00\x00\x00\x00\x01\x00\x00\x00", b"\xfe" + b"\xff" * 8, b"\xfc\xff", b"hr_prod\x00x", b"\xff\xfe\x80",
    b"employee\x00%\x00", b"\x00" * 64, b"SELECT 1", b"hr_prod",
]


def structured(command: int) -> st.SearchStrategy[bytes]:
    """Bodies shaped like the command's (so parsing gets past its first byte)."""
    ids = st.sampled_from([0, 1, 2, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1)
    if command == wire.COM_INIT_DB:
        return st.sampled_from([b"hr_prod", b"hr_test", b"mysql", b"", b"HR_PROD"]) | st.binary(max_size=70)
    if command == wire.COM_FIELD_LIST:
        return st.builds(lambda t, w: t + b"\x00" + w, st.sampled_from([b"employee", b"title", b"", b"\xff"]),
                         st.binary(max_size=8))
    if command == wire.COM_QUERY:
        return (st.sampled_from([b"SELECT 1", b"USE hr_prod", b"SELECT * FROM hr_prod.employee WHERE id = 1",
                                 b"KILL 1", b"SET NAMES latin1", b"SELECT '\xff'"]) | st.binary(max_size=40))
    if command == wire.COM_PROCESS_KILL:
        return st.builds(lambda i, n: i.to_bytes(4, "little")[:n], ids, st.integers(0, 4))
    if wire.COM_STMT_EXECUTE <= command <= wire.COM_STMT_RESET or command == wire.COM_STMT_FETCH:
        return st.builds(lambda i, tail: i.to_bytes(4, "little") + tail, ids, st.binary(max_size=24))
    if command == wire.COM_SET_OPTION:
        return st.binary(min_size=0, max_size=3)
    return st.binary(max_size=24)


def check(command: int, ex: Exchange) -> None:
    """One command's answer: never an internal error; an answer unless the protocol has none;
    closed only on COM_QUIT or after telling why (an ERR)."""
    assert_no_internal_errors(ex.packets)
    if ex.closed:
        assert command == wire.COM_QUIT or (ex.packets and ex.packets[-1][:1] == b"\xff"), (command, ex)
    elif command not in NO_RESPONSE:
        assert ex.packets, f"no answer to command 0x{command:02x}"


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: wire.COMMAND_NAMES.get(c, f"0x{c:02x}"))
def test_every_command_with_hostile_bodies(proxy, tls_files, command):
    """Each command byte with each of the bodies above, on one session (a new one whenever the
    proxy closed it)."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            for body in HOSTILE:
                ex = client.exchange(bytes((command,)) + body)
                check(command, ex)
                if ex.closed:
                    client.close()
                    client = FuzzClient.logged_in(proxy)
        finally:
            client.close_quietly()


@fuzz(80)
@given(st.data())
def test_random_command_sequences(proxy, tls_files, data):
    """One session per example: up to four commands, each a random byte 0x00-0x20 with a body
    shaped for it or random."""
    commands = data.draw(st.lists(st.integers(0x00, 0x20), min_size=1, max_size=4), label="commands")
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            for command in commands:
                body = data.draw(structured(command) | st.binary(max_size=40), label=f"body 0x{command:02x}")
                ex = client.exchange(bytes((command,)) + body)
                check(command, ex)
                if ex.closed:
                    break
        finally:
            client.close_quietly()

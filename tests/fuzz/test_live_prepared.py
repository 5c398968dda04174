"""COM_STMT_* on a statement really prepared through the proxy, with random and hostile
payloads: EXECUTE (parameters decoded for the audit trail), SEND_LONG_DATA, RESET, FETCH.

Beyond "answered, never an internal error, still serving", the audit trail is checked against
a model of the protocol (prepared_model.py): an EXECUTE's event says its values came by
SEND_LONG_DATA exactly when long data was sent since the last EXECUTE or RESET."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from proxy.mysql import wire
from proxy.protocol.errors import ER
from proxy.protocol.stmt_commands import LAST_STMT_ID
from tests.fuzz import prepared_model
from tests.fuzz.execute_payloads import executes, header, hostile_executes, lenenc_bytes
from tests.fuzz.oracle import Watch, assert_no_internal_errors
from tests.fuzz.prepared_model import SQL, execute_events, session_id
from tests.fuzz.settings import fuzz
from tests.fuzz.wire_client import FuzzClient, err_code, packet

VAR_STRING = 0xFD


def _long_data(stmt_id: int, param: int, data: bytes) -> bytes:
    return bytes((wire.COM_STMT_SEND_LONG_DATA,)) + struct.pack("<IH", stmt_id, param) + data


@st.composite
def operations(draw, stmt_id: int, count: int) -> list[bytes]:
    """1..6 command payloads on the statement: EXECUTEs (well-formed or hostile, at least their
    9 fixed bytes), SEND_LONG_DATA for any parameter number, RESET, FETCH."""
    ops = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["execute", "hostile", "long_data", "reset", "fetch"]))
        if kind == "execute":
            ops.append(b"\x17" + draw(executes(stmt_id, count))[0])
        elif kind == "hostile":
            ops.append(b"\x17" + draw(hostile_executes(stmt_id, count).filter(lambda p: len(p) >= 9)))
        elif kind == "long_data":
            ops.append(_long_data(stmt_id, draw(st.integers(0, count + 1)), draw(st.binary(max_size=12))))
        elif kind == "reset":
            ops.append(bytes((wire.COM_STMT_RESET,)) + struct.pack("<I", stmt_id))
        else:
            rows = draw(st.sampled_from([0, 1, 2**32 - 1]) | st.integers(0, 2**32 - 1))
            ops.append(bytes((wire.COM_STMT_FETCH,)) + struct.pack("<II", stmt_id, rows))
    return ops


@fuzz(40)
@given(st.data())
def test_random_operations_on_a_prepared_statement(proxy, tls_files, data):
    """Drawn with the placeholder id 0 (see prepared_model), so a failing example is a corpus
    file as it stands: tests/corpus/stmt_session/."""
    payloads = data.draw(operations(0, 4), label="payloads")
    with Watch(proxy, tls_files):
        prepared_model.run(proxy, payloads)


@fuzz(50)
@given(st.data())
def test_hostile_execute_payloads_for_a_real_statement(proxy, tls_files, data):
    """One hostile EXECUTE (any length) per session: answered, audited or refused, never more."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            stmt_id, count = client.prepare(SQL)
            payload = data.draw(hostile_executes(stmt_id, count), label="payload")
            ex = client.exchange(b"\x17" + payload)
            assert_no_internal_errors(ex.packets)
            assert ex.packets and not ex.closed, ex
            if len(payload) < 9:
                assert err_code(ex.packets[0]) is not None
        finally:
            client.close_quietly()


# -- the bugs found, each pinned -----------------------------------------------------------------

def test_reset_drops_long_data_so_the_next_execute_is_audited(proxy, tls_files):
    """Found by the model above: COM_STMT_RESET discards the long data on the server, but the
    proxy kept the parameter marked as sent by long data, so the next EXECUTE, whose values
    were all in its packet, was audited as `params: null`: a client could hide its parameters
    from the audit trail with SEND_LONG_DATA + RESET before each EXECUTE."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            session = session_id(proxy, client)
            stmt_id, count = client.prepare(SQL)
            assert client.exchange(_long_data(stmt_id, 1, b"hidden")).packets == []
            assert client.exchange(bytes((wire.COM_STMT_RESET,)) + struct.pack("<I", stmt_id)).packets[0][:1] == b"\x00"
            bitmap = bytes([0b1101])  # only the second parameter is not NULL
            execute = header(stmt_id) + bitmap + b"\x01" + struct.pack("<HHHH", VAR_STRING, VAR_STRING, VAR_STRING,
                                                                       VAR_STRING) + lenenc_bytes(b"Ann")
            ex = client.exchange(b"\x17" + execute)
            assert ex.packets[0][:1] == b"\x02", ex  # two columns: the server ran it with 'Ann'
            event = execute_events(proxy, session)[-1]
            assert event["params"] == [None, "Ann", None, None] and "params_long_data" not in event, event
        finally:
            client.close_quietly()


GRANTED = b"SELECT COUNT(*) FROM hr_prod.title WHERE employee_id > ?"
REFUSED = b"SELECT * FROM hr_prod.salary WHERE employee_id = ?"


def _execute_one_int(stmt_id: int, value: int) -> bytes:
    """COM_STMT_EXECUTE of a one-parameter statement, the parameter a LONGLONG."""
    return b"\x17" + struct.pack("<IBI", stmt_id, 0, 1) + b"\x00\x01" + struct.pack("<Hq", 8, value)


def test_the_last_statement_alias_runs_what_the_proxy_prepared_last(proxy, tls_files):
    """MariaDB's drivers pipeline PREPARE and EXECUTE with statement id 0xFFFFFFFF ("the statement
    just prepared"): it runs the statement the proxy's last PREPARE prepared, decided and audited
    under its real id; pipelined in one write, both are answered in order."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            stmt_id, params = client.prepare(GRANTED)
            assert params == 1
            ex = client.exchange(_execute_one_int(LAST_STMT_ID, 0))
            assert ex.packets[0] == b"\x01", ex  # one column: it ran
            events = [e for e in proxy.events if e["type"] == "statement.completed"
                      and e.get("command") == "COM_STMT_EXECUTE" and e.get("stmt_id") == stmt_id]
            assert events and events[-1]["statement"] == GRANTED.decode()
            # as MariaDB's Node.js driver sends them: PREPARE and EXECUTE in one write
            ex = client.exchange_raw(packet(b"\x16" + GRANTED) + packet(_execute_one_int(LAST_STMT_ID, 5)))
            assert ex.packets[0][:1] == b"\x00" and b"\x01" in ex.packets, ex  # PREPARE_OK, then a result
            assert not any(err_code(p) for p in ex.packets), ex
        finally:
            client.close_quietly()


@pytest.mark.parametrize("command", [wire.COM_STMT_EXECUTE, wire.COM_STMT_FETCH, wire.COM_STMT_RESET])
def test_the_alias_after_a_refused_prepare_names_nothing(proxy, tls_files, command):
    """The server never saw a PREPARE the proxy refused, so to the server "last" would be the
    statement before it: through the proxy the alias then names nothing (ERR 1243)."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            client.prepare(GRANTED)
            refused = client.exchange(b"\x16" + REFUSED)
            assert err_code(refused.packets[0]) == 1142, refused
            body = {wire.COM_STMT_EXECUTE: _execute_one_int(LAST_STMT_ID, 0)[1:], wire.COM_STMT_FETCH:
                    struct.pack("<II", LAST_STMT_ID, 1)}.get(command, struct.pack("<I", LAST_STMT_ID))
            ex = client.exchange(bytes((command,)) + body)
            assert err_code(ex.packets[0]) == ER.UNKNOWN_STMT_HANDLER, ex
        finally:
            client.close_quietly()


@pytest.mark.parametrize("size", range(9))
def test_a_short_execute_of_a_real_statement_is_malformed(proxy, tls_files, size):
    """An EXECUTE shorter than its 9 fixed bytes is refused with 1835 before anything else:
    never relayed to the database nor audited as executed."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            session = session_id(proxy, client)
            stmt_id, _ = client.prepare(SQL)
            ex = client.exchange(b"\x17" + header(stmt_id)[:size])
            assert err_code(ex.packets[0]) == ER.MALFORMED_PACKET, ex
            assert execute_events(proxy, session) == []
        finally:
            client.close_quietly()

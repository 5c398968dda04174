"""Framing of pipelined packets after login (proxy/protocol/fastpath.py reads the client's bytes
in the socket callback before the command loop's stream does): commands sent back to back, the
byte stream cut into random pieces, must be answered in order, each exactly once, whether the
fast path or the command loop takes each of them."""

from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from proxy.protocol.errors import ER
from tests.fuzz.execute_payloads import header, lenenc_bytes
from tests.fuzz.oracle import Watch, assert_no_internal_errors
from tests.fuzz.prepared_model import SQL
from tests.fuzz.settings import fuzz
from tests.fuzz.wire_client import FuzzClient, err_code, packet
from tests.helpers import eventually

VAR_STRING = 0xFD


def _first_value(response: list[bytes]) -> bytes | None:
    """The first column of the first row of a text result set."""
    if len(response) < 4 or response[0][:1] in (b"\x00", b"\xff"):
        return None
    row = response[1 + response[0][0] + 1]
    return row[1 : 1 + row[0]]


@st.composite
def commands(draw, stmt_id: int) -> list[tuple[bytes, str, bytes | None]]:
    """(payload, expected kind of answer, expected first value) x 2..8."""
    out = []
    for i in range(draw(st.integers(2, 8))):
        kind = draw(st.sampled_from(["select", "select", "execute", "ping", "use", "bad"]))
        if kind == "select":
            out.append((b"\x03SELECT " + str(1000 + i).encode(), "rows", str(1000 + i).encode()))
        elif kind == "execute":
            body = header(stmt_id) + b"\x0d\x01" + struct.pack("<HHHH", VAR_STRING, VAR_STRING, VAR_STRING,
                                                               VAR_STRING) + lenenc_bytes(b"Ann")
            out.append((b"\x17" + body, "rows", None))
        elif kind == "ping":
            out.append((b"\x0e", "ok", None))
        elif kind == "use":
            out.append((b"\x02hr_prod", "ok", None))
        else:
            out.append((b"\x03SELEC 1", "err", None))
    return out


@fuzz(40)
@given(st.data())
def test_pipelined_commands_in_random_pieces(proxy, tls_files, data):
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            stmt_id, _ = client.prepare(SQL)
            cmds = data.draw(commands(stmt_id), label="commands")
            stream = b"".join(packet(p) for p, _, _ in cmds)
            cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8), label="cuts"))
            for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                client.send_raw(stream[a:b])
            for payload, kind, value in cmds:
                response = client.read_response()
                assert_no_internal_errors(response)
                got = {0x00: "ok", 0xFF: "err"}.get(response[0][0], "rows")
                assert got == kind, (payload, response)
                if value is not None:
                    assert _first_value(response) == value, (payload, response)
        finally:
            client.close_quietly()


# -- a header alone, then a body that is itself a packet -----------------------------------------

def test_a_body_sent_after_its_header_is_that_packet_s_body(proxy, tls_files):
    """The packet [header: 14 bytes, seq 0][body: 0e 00 00 00 03 'SELECT 42'], its header in one
    write and its body in the next, once the proxy has read the header. Its command byte is the
    body's first byte, 0x0A (COM_PROCESS_INFO): ERR 1047. The fast path, seeing the body arrive
    alone, took it for a packet of its own and ran SELECT 42, which this connection never sent
    as a command; the loop then waited for 14 more bytes, the connection out of step for good."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            body = packet(b"\x03SELECT 42")
            client.send_raw(len(body).to_bytes(3, "little") + b"\x00")
            assert eventually(lambda: client.waiting_for_body(proxy), timeout_s=5), "the header was not read"
            client.send_raw(body)
            answer = client.read()
            assert err_code(answer) == ER.UNKNOWN_COM, f"the body was run as a command of its own: {answer!r}"
        finally:
            client.close()


# -- pipelined bytes behind a statement in flight -----------------------------------------------

PIPELINE_BOUND = 4 * 1024 * 1024  # what the proxy may hold of one client's pipelined commands
BIG_RESULT = b"\x03SELECT a.title, b.title, c.title FROM hr_prod.title a JOIN hr_prod.title b JOIN hr_prod.title c"


def test_pipelined_bytes_behind_a_statement_in_flight_are_bounded(proxy, tls_files):
    """A client sends a query with a large result and does not read it (the statement stays in
    flight: the relay waits for the client), then keeps sending commands. The proxy must stop
    reading (TCP pushes back) rather than buffer them all: 16 MiB sent here, 4 MiB allowed."""
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            session = proxy.ctx.sessions[client.connection_id]
            client.send_raw(packet(BIG_RESULT))
            assert eventually(lambda: session._fast is not None, timeout_s=5)  # noqa: SLF001 - on the fast path
            pings = packet(b"\x0e") * (1024 * 1024 // 5)  # 1 MiB of COM_PING
            client.sock.settimeout(2)  # the proxy pushing back shows as a send that cannot finish
            sent = 0
            try:
                while sent < 16 * 1024 * 1024:
                    client.sock.sendall(pings)
                    sent += len(pings)
            except TimeoutError:
                pass
            held = len(session._fast_pending)  # noqa: SLF001
            assert held <= PIPELINE_BOUND, f"the proxy holds {held} bytes of pipelined commands"
        finally:
            client.close()

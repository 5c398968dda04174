"""The regression corpus: tests/corpus/<parser>/*.bin, each an input that once broke a parser of
client bytes, replayed on every run: on the pure parser, and over a live proxy where the input
reaches it from the network. Add a file for every new bug (its name says what broke).

  handshake/     a handshake response payload (parse_handshake_response; live: after TLS)
  lenenc/        bytes at position 0 of wire.read_lenenc
  stmt/          a COM_STMT_* payload, command byte first (prepared.parse_stmt_id; live: on a
                 session with a prepared statement, id 0 standing for it)
  stmt_session/  framed command packets on a prepared statement, id 0 standing for it
                 (live, checked against the audit model of prepared_model.py)
  framing/       framed command packets: answered the same whether sent in one write or each
                 header alone, the body once the proxy has read the header (live)"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from proxy.protocol.connection import SERVER_CAPABILITIES
from proxy.protocol.errors import ER, ClientError
from pymysql.constants.CLIENT import (
    SSL as CLIENT_SSL,
)
from proxy.protocol.handshake import HandshakeError, parse_handshake_response
from proxy.protocol.stmt_commands import STMT_HEADER_BYTES, parse_stmt_id
from proxy.mysql.wire import read_lenenc
from tests.fuzz import prepared_model
from tests.fuzz.oracle import Watch, assert_no_internal_errors
from tests.fuzz.wire_client import FuzzClient, err_code, packet
from tests.helpers import eventually

CORPUS = Path(__file__).parent.parent / "corpus"
REPLAYED = {"handshake", "lenenc", "stmt", "stmt_session", "framing"}

# Files whose bug is in a module this suite may not change; the mark goes when it is fixed.
UNFIXED: dict[str, str] = {}


def corpus(parser: str) -> list:
    files = sorted((CORPUS / parser).glob("*.bin"))
    assert files, f"tests/corpus/{parser}/ is empty"
    return [pytest.param(f, id=f.name, marks=[pytest.mark.xfail(strict=True, reason=UNFIXED[key])]
                         if (key := f"{parser}/{f.name}") in UNFIXED else []) for f in files]


def test_every_corpus_is_replayed():
    assert {d.name for d in CORPUS.iterdir() if d.is_dir()} <= REPLAYED


# -- pure parsers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", corpus("lenenc"))
def test_lenenc(path: Path):
    data = path.read_bytes()
    try:
        _, end = read_lenenc(data, 0)
    except ValueError:
        return
    assert end <= len(data)


@pytest.mark.parametrize("path", corpus("stmt"))
def test_stmt_pure(path: Path):
    data = path.read_bytes()
    try:
        parse_stmt_id(data[0], data[1:])
    except ClientError as e:
        assert e.code == ER.MALFORMED_PACKET and len(data) - 1 < STMT_HEADER_BYTES[data[0]]


@pytest.mark.parametrize("path", corpus("handshake"))
def test_handshake_pure(path: Path):
    try:
        parse_handshake_response(path.read_bytes(), int(SERVER_CAPABILITIES))
    except HandshakeError:
        pass


# -- over a live proxy ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", corpus("handshake"))
def test_handshake_after_tls(proxy, tls_files, path: Path):
    """As the handshake response after TLS (the CLIENT_SSL bit set, as a client there has it)."""
    data = path.read_bytes()
    data = struct.pack("<I", struct.unpack_from("<I", data)[0] | CLIENT_SSL) + data[4:]
    with Watch(proxy, tls_files):
        client = FuzzClient(proxy.port)
        try:
            client.start_tls()
            client.write(data)
            answer = client.read()
            assert_no_internal_errors([answer])
            assert err_code(answer) == ER.HANDSHAKE_ERROR and client.is_closed_by_server(), answer
        finally:
            client.close()


@pytest.mark.parametrize("path", corpus("stmt"))
def test_stmt_live(proxy, tls_files, path: Path):
    with Watch(proxy, tls_files):
        client = FuzzClient.logged_in(proxy)
        try:
            stmt_id, _ = client.prepare(prepared_model.SQL)
            ex = client.exchange(prepared_model.bind(path.read_bytes(), stmt_id))
            assert_no_internal_errors(ex.packets)
            assert [err_code(p) for p in ex.packets] == [ER.MALFORMED_PACKET], ex
        finally:
            client.close_quietly()


@pytest.mark.parametrize("path", corpus("stmt_session"))
def test_stmt_session(proxy, tls_files, path: Path):
    with Watch(proxy, tls_files):
        prepared_model.run(proxy, prepared_model.split_packets(path.read_bytes()))


def _signatures(client: FuzzClient, n: int) -> list[tuple[str, int | None]]:
    """The kind of each of the next `n` answers (OK, ERR with its code, or a result set)."""
    out = []
    for _ in range(n):
        response = client.read_response()
        assert_no_internal_errors(response)
        out.append(({0x00: "ok", 0xFF: "err"}.get(response[0][0], "rows"), err_code(response[0])))
    return out


@pytest.mark.parametrize("path", corpus("framing"))
def test_framing(proxy, tls_files, path: Path):
    packets = prepared_model.split_packets(path.read_bytes())
    with Watch(proxy, tls_files):
        whole = FuzzClient.logged_in(proxy)
        try:
            whole.send_raw(b"".join(packet(p) for p in packets))
            expected = _signatures(whole, len(packets))
        finally:
            whole.close_quietly()
        apart = FuzzClient.logged_in(proxy)
        try:
            for p in packets:
                apart.send_raw(len(p).to_bytes(3, "little") + b"\x00")
                assert eventually(lambda: apart.waiting_for_body(proxy), timeout_s=5), "the header was not read"
                apart.send_raw(p)
                assert _signatures(apart, 1) == expected[:1]
                expected = expected[1:]
        finally:
            apart.close()

"""Garbage from the network never takes the proxy down: each hostile connection gets an error or
is closed, and a well-behaved client is served right after."""

from __future__ import annotations

import socket
import ssl
import struct
import uuid

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.integration.conftest import client_ssl
from tests.integration.rawclient import BASE_FLAGS, RawClient


def _still_serving(proxy, tls_files) -> None:
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                        ssl=client_ssl(tls_files), connect_timeout=10)
    with c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    c.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=300))
def test_garbage_before_login(proxy, tls_files, garbage):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.recv(4096)  # the handshake
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
    _still_serving(proxy, tls_files)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 255), st.binary(max_size=200))
def test_garbage_commands_after_login(proxy, tls_files, command, body):
    raw = RawClient(proxy.port)
    raw.start_tls(BASE_FLAGS)
    assert raw.login("dev", proxy.token("dev").encode())[:1] == b"\x00"
    if command in (0x01,):  # COM_QUIT: nothing comes back
        raw.close()
        return
    try:
        reply = raw.command(bytes((command,)) + body)
        assert reply[:1] in (b"\x00", b"\xff", b"\xfe") or len(reply) > 0
    except (ConnectionError, OSError, ssl.SSLError):
        pass  # closing a connection that sent nonsense is fine
    finally:
        raw.close()
    _still_serving(proxy, tls_files)


# -- a handshake response no client sends (mysql-mimic's parser looped forever on these) ------

def _fixed(flags: int) -> bytes:
    return struct.pack("<IIB23x", flags, 1 << 24, 45)


_SECURE = 0x200 | 0x8000  # PROTOCOL_41 | SECURE_CONNECTION
_LENENC = _SECURE | (1 << 19) | (1 << 21)  # + PLUGIN_AUTH | PLUGIN_AUTH_LENENC_CLIENT_DATA


def _bad_handshake_answer(raw: RawClient, body: bytes) -> bytes:
    """Send `body` as the handshake response; the server's answer (b"" if it only closed)."""
    raw.write(body)
    try:
        return raw.read()
    except (ConnectionError, ssl.SSLError, OSError):
        return b""


@pytest.mark.parametrize("tls", [False, True], ids=["before-tls", "after-tls"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_fixed(_SECURE) + b"AAAAAAAA", id="user-without-nul"),
        pytest.param(_fixed(_LENENC) + b"u\x00\xfa" + b"x" * 5, id="auth-length-0xfa"),
        pytest.param(_fixed(_LENENC) + b"u\x00\xfe" + (1 << 63).to_bytes(8, "little"), id="auth-length-2^63"),
        pytest.param(_fixed(_LENENC) + b"u\x00\xfc\xff\xff" + b"x" * 5, id="auth-length-65535"),
    ],
)
def test_malformed_handshake_response_answers_and_never_wedges(proxy, tls_files, tls, body):
    """The issue's 44-byte reproduction and its after-TLS variants: the connection is told
    1043 Bad handshake and closed, the attempt is audited, and the proxy keeps serving."""
    before = len(proxy.events)
    raw = RawClient(proxy.port)
    try:
        if tls:
            raw.start_tls()
            body = struct.pack("<I", struct.unpack_from("<I", body)[0] | 0x800) + body[4:]
        answer = _bad_handshake_answer(raw, body)
        assert answer[:1] == b"\xff" and struct.unpack_from("<H", answer, 1)[0] == 1043, answer
        assert raw.is_closed_by_server()
    finally:
        raw.close()
    _still_serving(proxy, tls_files)
    rejected = [e for e in proxy.events[before:] if e["type"] == "session.rejected"]
    assert any(e.get("reason_code") == "bad_handshake" and "malformed handshake" in e.get("reason", "")
               for e in rejected), rejected


def test_oversized_handshake_packet_refused_before_reading_it(proxy, tls_files):
    """Before login a packet over listen.max_handshake_packet_bytes is refused from its header:
    the proxy never buffers a stranger's 64 MiB."""
    raw = RawClient(proxy.port)
    try:
        raw.sock.sendall((16 * 1024 * 1024 - 1).to_bytes(3, "little") + b"\x01" + b"x" * 1024)
        answer = raw.read()
        assert answer[:1] == b"\xff" and struct.unpack_from("<H", answer, 1)[0] == 1153, answer
    finally:
        raw.close()
    _still_serving(proxy, tls_files)


@pytest.mark.parametrize("command", [0x02, 0x04], ids=["COM_INIT_DB", "COM_FIELD_LIST"])
def test_a_name_not_valid_in_the_charset_is_refused_and_never_sent(proxy, tls_files, mariadb, command):
    """Bytes the connection's character set cannot decode could name another object to the
    server: refused (charset), audited as sent, never forwarded (admin may use any database)."""
    marker = f"hr_{uuid.uuid4().hex[:8]}".encode()
    raw = RawClient(proxy.port)
    try:
        raw.start_tls()
        assert raw.login("admin", proxy.token("admin").encode())[:1] == b"\x00"
        if command == 0x04:
            assert raw.command(b"\x02hr_prod")[:1] == b"\x00"
        answer = raw.command(bytes((command,)) + marker + b"\xff\xfe" + (b"\x00" if command == 0x04 else b""))
        assert answer[:1] == b"\xff" and "charset" in answer.decode("utf-8", "replace"), answer
        assert raw.command(b"\x03SELECT 1")[:1] == b"\x01"  # the session goes on
    finally:
        raw.close()
    denied = [e for e in proxy.events if e["type"] == "statement.denied" and e.get("reason_code") == "charset"
              and marker.decode() in e.get("statement", "")]
    assert denied
    assert marker.decode() not in mariadb.general_log_text()

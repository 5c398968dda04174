"""Garbage from the network never takes the proxy down: each hostile connection gets an error or
is closed, and a well-behaved client is served right after."""

from __future__ import annotations

import socket
import ssl

import pymysql
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

"""Random byte streams before login, against a live proxy: frames whose length fields lie (the
header promising more than follows, or less), wrong sequence ids, an SSLRequest followed by
bytes that are not TLS, packets cut anywhere. Whatever arrives, the proxy answers with an error
it declares (never an internal one) or closes, within a bound, and keeps serving others."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, strategies as st

from pymysql.constants.CLIENT import (
    PLUGIN_AUTH as CLIENT_PLUGIN_AUTH,
    PROTOCOL_41 as CLIENT_PROTOCOL_41,
    SECURE_CONNECTION as CLIENT_SECURE_CONNECTION,
    SSL as CLIENT_SSL,
)
from tests.fuzz.oracle import Watch, assert_no_internal_errors, no_errors_logged
from tests.fuzz.settings import fuzz
from tests.fuzz.wire_client import READ_TIMEOUT_S, err_code

SSL_REQUEST = struct.pack("<IIB23x", CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | CLIENT_SSL,
                          1 << 24, 45)
SSL_REQUEST_FRAME = len(SSL_REQUEST).to_bytes(3, "little") + b"\x01" + SSL_REQUEST


@st.composite
def frame(draw) -> bytes:
    """A packet whose length field is right, or off by a little, or huge; any sequence id; its
    body a handshake response's fixed part and more, or random bytes."""
    body = draw(st.builds(lambda caps, rest: struct.pack("<IIB23x", caps, 1 << 24, 45) + rest,
                          st.integers(0, 2**32 - 1), st.binary(max_size=40))
                | st.binary(max_size=64))
    declared = draw(st.sampled_from(["exact", "exact", "short", "long", "huge"]))
    length = {"exact": len(body), "short": max(len(body) - draw(st.integers(1, 8)), 0),
              "long": len(body) + draw(st.integers(1, 64)), "huge": draw(st.integers(0, 0xFFFFFF))}[declared]
    seq = draw(st.sampled_from([1, 1, 2]) | st.integers(0, 255))
    return length.to_bytes(3, "little") + bytes((seq,)) + body


# Frames, an SSLRequest followed by bytes that are not TLS, or raw bytes: whole, or cut anywhere
# (the last packet left partial).
streams = st.one_of(
    st.lists(frame(), min_size=1, max_size=3).map(b"".join),
    st.builds(lambda garbage: SSL_REQUEST_FRAME + garbage, st.binary(max_size=200)),  # then not TLS
    st.binary(min_size=1, max_size=200),
).flatmap(lambda data: st.integers(0, len(data)).map(lambda cut: data[: max(cut, 1)]) | st.just(data))


def _answers(data: bytes) -> list[bytes]:
    """The MySQL packets in what the proxy sent back (stops at anything that is not one: TLS)."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos : pos + 3], "little")
        if pos + 4 + n > len(data):
            break
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def drain(s: socket.socket) -> bytes:
    """End our side; everything the proxy sends until it closes. Fails if it neither closes nor
    speaks within READ_TIMEOUT_S (a connection left hanging on a length it will never get)."""
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # closed already
    received = b""
    try:
        while chunk := s.recv(4096):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"the proxy neither answered nor closed within {READ_TIMEOUT_S} s") from None
    except ConnectionResetError:
        pass
    return received


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    greeting = s.recv(4096)
    assert greeting[4:5] == b"\x0a", greeting
    return s


@fuzz(100)
@given(streams)
def test_random_streams_before_login(proxy, tls_files, stream):
    with Watch(proxy, tls_files):
        with connect(proxy.port) as s:
            s.sendall(stream)
            received = drain(s)
        if stream.startswith(SSL_REQUEST_FRAME):
            return  # the rest went to TLS (and failed there): nothing of MySQL's to parse
        answers = _answers(received)
        assert_no_internal_errors(answers)
        assert all(err_code(a) is not None for a in answers), answers  # no OK before login


@fuzz(40)
@given(st.lists(st.binary(min_size=1, max_size=24), min_size=2, max_size=8))
def test_a_stream_in_pieces_is_one_stream(proxy, tls_files, pieces):
    """The same bytes, sent piece by piece with Nagle off: the stream reader's partial-packet
    paths (a header in two segments, a body in several)."""
    with Watch(proxy, tls_files):
        with connect(proxy.port) as s:
            for piece in pieces:
                try:
                    s.sendall(piece)
                except OSError:  # closed already: an answer came for what was sent before
                    break
            received = drain(s)
        answers = _answers(received)
        assert_no_internal_errors(answers)
        assert all(err_code(a) is not None for a in answers), answers


def test_the_log_oracle_sees_the_proxy_s_logs(proxy):
    """The oracle's third check reads the proxy's structlog output: if logging were configured so
    that capture misses it (cached loggers), that check would pass blindly. A malformed
    handshake is logged at info level: it must show up."""
    with no_errors_logged() as logs:
        with connect(proxy.port) as s:
            s.sendall(len(b"\x00" * 40).to_bytes(3, "little") + b"\x01" + b"\x00" * 32 + b"AAAAAAAA")
            drain(s)
    assert any(e.get("event") == "malformed handshake" for e in logs), logs

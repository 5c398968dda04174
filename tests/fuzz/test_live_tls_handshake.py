"""The handshake response and the authentication replies, fuzzed over a live proxy after the TLS
upgrade, where they really arrive (proxy/protocol/handshake.py, then auth.py): a well-formed
response cut or altered anywhere, random bytes, any sequence id; then, if the proxy asks (auth
switch 0xFE, more data 0x01), random replies, the real token, or a reply far too large.

Each attempt ends in an OK (only with the real token), or an ERR the proxy declares followed by
the connection closing: never an internal error, never a session that goes on after an ERR."""

from __future__ import annotations

import ssl
import struct

from hypothesis import event, given, strategies as st

from pymysql.constants.CLIENT import (
    CONNECT_ATTRS as CLIENT_CONNECT_ATTRS,
    CONNECT_WITH_DB as CLIENT_CONNECT_WITH_DB,
    PLUGIN_AUTH as CLIENT_PLUGIN_AUTH,
    PLUGIN_AUTH_LENENC_CLIENT_DATA as CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    PROTOCOL_41 as CLIENT_PROTOCOL_41,
    SECURE_CONNECTION as CLIENT_SECURE_CONNECTION,
    SSL as CLIENT_SSL,
)
from proxy.protocol.handshake import MAX_AUTH_BYTES
from proxy.mysql.wire import lenenc_int
from tests.fuzz.oracle import Watch, assert_no_internal_errors
from tests.fuzz.settings import fuzz
from tests.fuzz.wire_client import FuzzClient

TOKEN = object()  # drawn as a stand-in: replaced by a fresh token for "dev" when sent
BASE = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_SSL
OPTIONAL = [CLIENT_CONNECT_WITH_DB, CLIENT_PLUGIN_AUTH, CLIENT_CONNECT_ATTRS, CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA]
PLUGINS = [b"mysql_clear_password", b"caching_sha2_password", b"mysql_native_password", b"client_ed25519", b""]


def lenenc(data: bytes) -> bytes:
    return lenenc_int(len(data)) + data


@st.composite
def responses(draw) -> tuple[list[object], int | None]:
    """(the response as parts, TOKEN standing for the token; a sequence id or None = the right one)."""
    flags = BASE | sum(draw(st.sets(st.sampled_from(OPTIONAL))))
    user = draw(st.sampled_from([b"dev", b""]) | st.binary(max_size=20).filter(lambda b: b"\x00" not in b))
    auth: object = draw(st.sampled_from([TOKEN, b""]) | st.binary(max_size=40))
    parts: list[object] = [struct.pack("<IIB23x", flags, 1 << 24, draw(st.sampled_from([45, 33, 8, 28, 0, 255]))),
                           user + b"\x00"]
    if flags & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        parts += [("lenenc", auth)]
    else:
        parts += [("byte", auth)]
    if flags & CLIENT_CONNECT_WITH_DB:
        parts.append(draw(st.sampled_from([b"hr_prod", b"", b"nope"])) + b"\x00")
    if flags & CLIENT_PLUGIN_AUTH:
        parts.append(draw(st.sampled_from(PLUGINS)) + b"\x00")
    if flags & CLIENT_CONNECT_ATTRS:
        attrs = draw(st.dictionaries(st.binary(min_size=1, max_size=8), st.binary(max_size=16), max_size=3))
        parts.append(lenenc(b"".join(lenenc(k) + lenenc(v) for k, v in attrs.items())))
    seq = draw(st.none() | st.none() | st.integers(0, 255))
    return parts, seq


def render(parts: list[object], token: bytes) -> bytes:
    out = b""
    for part in parts:
        if isinstance(part, tuple):
            how, auth = part
            value = token if auth is TOKEN else auth
            out += lenenc(value) if how == "lenenc" else bytes((min(len(value), 255),)) + value[:255]
        else:
            out += part
    return out


@st.composite
def altered(draw, data: bytes) -> bytes:
    """`data` as sent, cut, with bytes changed, or with a length prefix claiming too much."""
    how = draw(st.sampled_from(["as is", "as is", "cut", "flip", "lie", "random"]))
    if how == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes((draw(st.integers(0, 255)),)) + data[i + 1 :]
    if how == "lie":
        i = draw(st.integers(32, max(len(data), 32)))
        return data[:i] + draw(st.sampled_from([b"\xfc\xff\xff", b"\xfe" + b"\xff" * 8, b"\xfb", b"\xff", b"\x50"]))
    if how == "random":
        return draw(st.binary(max_size=120))
    return data


replies = (st.sampled_from([TOKEN, b"\x02", b"", b"\x00"]) | st.binary(max_size=40)
           | st.just(b"x" * (MAX_AUTH_BYTES + 1)))


@fuzz(80)
@given(st.data())
def test_handshake_and_auth_after_tls(proxy, tls_files, data):
    parts, seq = data.draw(responses(), label="response")
    token = proxy.token("dev").encode()
    body = data.draw(altered(render(parts, token)), label="sent")
    with Watch(proxy, tls_files):
        client = FuzzClient(proxy.port)
        try:
            client.start_tls()
            answers = []
            client.write(body, seq)
            for _ in range(4):  # the proxy's exchange has at most four steps
                try:
                    answer = client.read()
                except (ConnectionError, ssl.SSLError, OSError):
                    break  # closed without a word: only for framing it could not read
                answers.append(answer)
                if answer[:1] not in (b"\xfe", b"\x01"):  # OK or ERR: the end of the exchange
                    break
                reply = data.draw(replies, label="reply")
                client.write(token + b"\x00" if reply is TOKEN else reply)
            event(" -> ".join({0: "OK", 0xFF: "ERR", 0xFE: "switch", 1: "more data"}.get(a[0], "?") if a else "empty"
                              for a in answers) or "closed")
            assert_no_internal_errors(answers)
            if answers and answers[-1][:1] == b"\xff":  # whichever refusal (1043, 1045, 1115, 1235...)
                assert client.is_closed_by_server(), f"the session went on after {answers[-1]!r}"
        finally:
            client.close()

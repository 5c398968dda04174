"""The handshake response parser is total: any bytes either parse or raise HandshakeError,
bounded in time and memory; well-formed responses parse to what was written."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from proxy.protocol.connection import SERVER_CAPABILITIES
from proxy.mysql.wire import lenenc_int
from pymysql.constants.CLIENT import (
    CONNECT_ATTRS as CLIENT_CONNECT_ATTRS,
    CONNECT_WITH_DB as CLIENT_CONNECT_WITH_DB,
    PLUGIN_AUTH as CLIENT_PLUGIN_AUTH,
    PLUGIN_AUTH_LENENC_CLIENT_DATA as CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    PROTOCOL_41 as CLIENT_PROTOCOL_41,
    SECURE_CONNECTION as CLIENT_SECURE_CONNECTION,
    SSL as CLIENT_SSL,
)
from proxy.protocol.handshake import HandshakeError, parse_handshake_response

CAPS = int(SERVER_CAPABILITIES)
CORPUS = Path(__file__).parent.parent / "corpus" / "handshake"


_lenenc = lenenc_int


def _fixed(flags: int, collation: int = 45) -> bytes:
    return struct.pack("<IIB23x", flags, 1 << 24, collation)


def _response(flags: int, user: bytes, auth: bytes, db: bytes | None, plugin: bytes | None,
              attrs: dict[bytes, bytes] | None) -> bytes:
    body = _fixed(flags) + user + b"\x00"
    if flags & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        body += _lenenc(len(auth)) + auth
    else:
        body += bytes((len(auth),)) + auth
    if flags & CLIENT_CONNECT_WITH_DB:
        body += (db or b"") + b"\x00"
    if flags & CLIENT_PLUGIN_AUTH:
        body += (plugin or b"") + b"\x00"
    if flags & CLIENT_CONNECT_ATTRS:
        block = b"".join(_lenenc(len(k)) + k + _lenenc(len(v)) + v for k, v in (attrs or {}).items())
        body += _lenenc(len(block)) + block
    return body


# -- the reproductions of the issue (each looped forever in mysql-mimic's parser) -----------

BASE = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(struct.pack("<IIB23x", 0x200 | 0x8000, 1 << 24, 45) + b"AAAAAAAA", id="user-without-nul"),
        pytest.param(_fixed(BASE | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) + b"u\x00\xfa" + b"x" * 5, id="lenenc-0xfa"),
        pytest.param(_fixed(BASE | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) + b"u\x00\xfe" + (1 << 63).to_bytes(8, "little"),
                     id="lenenc-2^63"),
        pytest.param(_fixed(BASE | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) + b"u\x00\xfc\xff\xff" + b"x" * 10,
                     id="lenenc-65535"),
        pytest.param(_fixed(BASE) + b"u\x00\x50" + b"x" * 3, id="auth-length-past-end"),
        pytest.param(_fixed(BASE | CLIENT_CONNECT_ATTRS) + b"u\x00\x00\x05\x03abc", id="attrs-past-end"),
        pytest.param(_fixed(BASE | CLIENT_CONNECT_ATTRS) + b"u\x00\x00\x04\x09ab\x00", id="attr-name-past-block"),
        pytest.param(_fixed(BASE | CLIENT_CONNECT_ATTRS) + b"u\x00\x00\xfe" + b"\xff" * 8, id="attrs-huge"),
    ],
)
def test_malformed_responses_raise(payload: bytes) -> None:
    with pytest.raises(HandshakeError) as e:
        parse_handshake_response(payload, CAPS)
    assert e.value.code == 1043 and e.value.message == "Bad handshake" and e.value.detail


def test_ssl_request() -> None:
    r = parse_handshake_response(_fixed(BASE | CLIENT_SSL), CAPS)
    assert r.ssl_request and r.client_capabilities & CLIENT_SSL and r.collation_id == 45


def test_client_capabilities_kept_raw() -> None:
    """A flag the server did not offer (CLIENT_COMPRESS) is kept as the client sent it, apart
    from the capabilities that decide the layout."""
    flags = BASE | (1 << 5)
    r = parse_handshake_response(_response(flags, b"dev", b"t", None, None, None), CAPS)
    assert r.client_capabilities & (1 << 5) and not r.capabilities & (1 << 5)


@settings(max_examples=300, deadline=None)
@given(
    flags=st.sets(st.sampled_from([CLIENT_CONNECT_WITH_DB, CLIENT_PLUGIN_AUTH, CLIENT_CONNECT_ATTRS,
                                   CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA])),
    user=st.binary(max_size=40).filter(lambda b: b"\x00" not in b),
    auth=st.binary(max_size=300),
    db=st.binary(max_size=40).filter(lambda b: b"\x00" not in b),
    plugin=st.sampled_from([b"mysql_clear_password", b"caching_sha2_password", b""]),
    attrs=st.dictionaries(st.binary(min_size=1, max_size=20), st.binary(max_size=300), max_size=5),
)
def test_well_formed_round_trip(flags, user, auth, db, plugin, attrs) -> None:
    f = BASE | sum(flags)
    if not f & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = auth[:255]
    payload = _response(f, user, auth, db, plugin, attrs)
    try:
        user.decode("utf-8")
        if f & CLIENT_CONNECT_WITH_DB:
            db.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(HandshakeError):
            parse_handshake_response(payload, CAPS)
        return
    r = parse_handshake_response(payload, CAPS)
    assert not r.ssl_request
    assert r.username == user.decode() and r.auth_response == auth
    if f & CLIENT_CONNECT_WITH_DB:
        assert r.database == (db.decode() or None)
    if f & CLIENT_PLUGIN_AUTH:
        assert r.client_plugin == plugin.decode()
    if f & CLIENT_CONNECT_ATTRS:
        assert r.connect_attrs == {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in attrs.items()}


@settings(max_examples=1500, deadline=None)
@given(st.binary(min_size=32, max_size=400))
def test_any_bytes_parse_or_raise(data: bytes) -> None:
    """Total: nothing but a result or HandshakeError, whatever the bytes."""
    try:
        parse_handshake_response(data, CAPS)
    except HandshakeError:
        pass


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=300))
def test_any_body_after_the_fixed_part(flags: int, rest: bytes) -> None:
    """Random bodies under every capability combination (where the layouts differ)."""
    try:
        parse_handshake_response(_fixed(flags) + rest, CAPS)
    except HandshakeError:
        pass


def test_truncations_of_a_real_response() -> None:
    """Every prefix of a full response either parses or raises: never anything else."""
    flags = BASE | CLIENT_CONNECT_WITH_DB | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    full = _response(flags, b"dev", b"x" * 300, b"hr_prod", b"mysql_clear_password",
                     {b"_client_name": b"libmariadb", b"program_name": b"mariadb"})
    for n in range(32, len(full) + 1):
        try:
            parse_handshake_response(full[:n], CAPS)
        except HandshakeError:
            pass


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.name)
def test_regression_corpus(path: Path) -> None:
    """Inputs that once broke a parser of client bytes: each must parse or raise HandshakeError."""
    try:
        parse_handshake_response(path.read_bytes(), CAPS)
    except HandshakeError:
        pass

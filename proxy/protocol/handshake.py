"""The client's handshake response (SSLRequest / HandshakeResponse41), parsed by a total function.

These are the first bytes a stranger sends, before TLS and before any token. mysql-mimic's
parser loops forever on a user name without its NUL or an auth length running past the packet
(its reader returns b"" at the end instead of failing), which froze the whole event loop; so
this parse is ours: every read is bounded by the packet, every field by a size that no real
client comes near, and anything else raises `HandshakeError` (the connection answers 1043 and
closes). Fuzzed in tests/unit/test_handshake_parse.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from pymysql.constants import CLIENT  # the capability bits, as the protocol numbers them

from proxy.protocol.errors import ER, ClientError

MAX_NAME_BYTES = 512  # user, database, plugin names (MySQL: 32/64/64 characters)
MAX_AUTH_BYTES = 16 * 1024  # the token travels here or in the next packet; a JWT is < 4 KiB
MAX_ATTRS_BYTES = 64 * 1024  # connect attributes (a real client sends a few hundred bytes)
MAX_ATTRS = 128


def make_greeting(
    server_version: str,
    connection_id: int,
    nonce: bytes,
    capabilities: int,
    collation_id: int,
    status: int,
    auth_plugin: str,
) -> bytes:
    """Initial handshake packet (protocol 10), as a MySQL/MariaDB server writes it. `nonce` is
    the 20-byte scramble plus its NUL; `collation_id` and `status` are the upstream server's
    own defaults, which drivers take as the session's starting state."""
    return b"".join((
        b"\x0a",
        server_version.encode("utf-8") + b"\x00",
        connection_id.to_bytes(4, "little"),
        nonce[:8],
        b"\x00",
        (capabilities & 0xFFFF).to_bytes(2, "little"),
        bytes((collation_id & 0xFF,)),
        (status & 0xFFFF).to_bytes(2, "little"),
        ((capabilities >> 16) & 0xFFFF).to_bytes(2, "little"),
        bytes((len(nonce),)) if capabilities & CLIENT.PLUGIN_AUTH else b"\x00",
        bytes(10),
        nonce[8:].ljust(13, b"\x00"),
        auth_plugin.encode("ascii") + b"\x00" if capabilities & CLIENT.PLUGIN_AUTH else b"",
    ))


class HandshakeError(ClientError):
    """The handshake response is not one a MySQL client would send."""

    def __init__(self, detail: str) -> None:
        super().__init__(ER.HANDSHAKE_ERROR, "Bad handshake", keep_connection=False)
        self.detail = detail  # for the audit event and the log; never echoed to the client


@dataclass(frozen=True)
class HandshakeResponse:
    client_capabilities: int  # as the client sent them
    capabilities: int  # those the server offered too: they decide the layout
    max_packet_size: int
    collation_id: int
    ssl_request: bool  # a bare SSLRequest: TLS comes next
    username: str = ""
    auth_response: bytes = b""
    database: str | None = None
    client_plugin: str | None = None
    connect_attrs: dict[str, str] = field(default_factory=dict)


class Reader:
    """A bounded cursor over one payload: each read either returns what was asked for, whole,
    or raises HandshakeError. Never returns a short read, never reads past the end."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def fixed(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining:
            raise HandshakeError(f"{what}: needs {n} bytes, {self.remaining} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.fixed(n, what), "little")

    def lenenc_int(self, what: str) -> int:
        first = self.uint(1, what)
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.uint(2, what)
        if first == 0xFD:
            return self.uint(3, what)
        if first == 0xFE:
            return self.uint(8, what)
        raise HandshakeError(f"{what}: invalid length prefix 0x{first:02x}")

    def lenenc_bytes(self, what: str, limit: int) -> bytes:
        n = self.lenenc_int(what)
        if n > limit:
            raise HandshakeError(f"{what}: {n} bytes, over the limit of {limit}")
        return self.fixed(n, what)

    def null_terminated(self, what: str, limit: int, required: bool = True) -> bytes:
        """Bytes up to a NUL (consumed). Without one: an error, or (required=False, the packet's
        last field, as servers accept it) the rest of the packet."""
        stop = self.data.find(b"\x00", self.pos, min(self.end, self.pos + limit + 1))
        if stop < 0:
            if required or self.remaining > limit:
                raise HandshakeError(f"{what}: no terminating NUL within {limit} bytes")
            stop = self.end
            out = self.data[self.pos : stop]
            self.pos = stop
            return out
        out = self.data[self.pos : stop]
        self.pos = stop + 1
        return out


def parse_handshake_response(data: bytes, server_capabilities: int, codec: str = "utf-8") -> HandshakeResponse:
    """One SSLRequest or HandshakeResponse41 payload → HandshakeResponse, or HandshakeError.
    The fields present follow the capabilities both sides have (as MySQL servers read them);
    `codec` decodes the names (the client's character set)."""
    r = Reader(data)
    client_caps = r.uint(4, "capabilities")
    caps = client_caps & server_capabilities
    max_packet = r.uint(4, "max packet size")
    collation = r.uint(1, "collation")
    r.fixed(23, "reserved bytes")
    if r.remaining == 0:
        return HandshakeResponse(client_caps, caps, max_packet, collation, ssl_request=True)

    username = _text(r.null_terminated("user name", MAX_NAME_BYTES), codec, "user name")
    if caps & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = r.lenenc_bytes("auth response", MAX_AUTH_BYTES)
    elif caps & CLIENT.SECURE_CONNECTION:
        auth = r.fixed(r.uint(1, "auth response length"), "auth response")
    else:
        auth = r.null_terminated("auth response", MAX_AUTH_BYTES, required=False)
    database = None
    if caps & CLIENT.CONNECT_WITH_DB and r.remaining:
        database = _text(r.null_terminated("database", MAX_NAME_BYTES, required=False), codec, "database") or None
    plugin = None
    if caps & CLIENT.PLUGIN_AUTH and r.remaining:
        plugin = _text(r.null_terminated("auth plugin", MAX_NAME_BYTES, required=False), codec, "auth plugin")
    attrs: dict[str, str] = {}
    if caps & CLIENT.CONNECT_ATTRS and r.remaining:
        attrs = _connect_attrs(r)
    return HandshakeResponse(
        client_caps, caps, max_packet, collation, ssl_request=False, username=username,
        auth_response=auth, database=database, client_plugin=plugin, connect_attrs=attrs,
    )


def _connect_attrs(r: Reader) -> dict[str, str]:
    total = r.lenenc_int("connect attributes length")
    if total > MAX_ATTRS_BYTES:
        raise HandshakeError(f"connect attributes: {total} bytes, over the limit of {MAX_ATTRS_BYTES}")
    block = Reader(r.data, r.pos, r.pos + len(r.fixed(total, "connect attributes")))
    attrs: dict[str, str] = {}
    while block.remaining:
        if len(attrs) >= MAX_ATTRS:
            raise HandshakeError(f"connect attributes: more than {MAX_ATTRS}")
        key = block.lenenc_bytes("connect attribute name", MAX_ATTRS_BYTES)
        value = block.lenenc_bytes("connect attribute value", MAX_ATTRS_BYTES)
        attrs[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return attrs


def _text(raw: bytes, codec: str, what: str) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        raise HandshakeError(f"{what}: not valid in the client's character set") from None

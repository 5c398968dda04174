"""A deliberately naive MySQL client over a raw socket, for protocol tests that real drivers
would never do (ignore an ERR and keep talking, skip TLS, send oversized or garbage packets)."""

from __future__ import annotations

import socket
import ssl
import struct

CLIENT_LONG_PASSWORD = 1
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_PLUGIN_AUTH_LENENC = 1 << 21

BASE_FLAGS = (
    CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC | CLIENT_MULTI_RESULTS
)


class RawClient:
    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.seq = 0
        self.handshake = self.read()

    def read(self) -> bytes:
        header = self._exactly(4)
        length = int.from_bytes(header[:3], "little")
        self.seq = (header[3] + 1) & 0xFF
        return self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed by the server")
            out += chunk
        return out

    def write(self, payload: bytes, seq: int | None = None) -> None:
        s = self.seq if seq is None else seq
        self.sock.sendall(len(payload).to_bytes(3, "little") + bytes((s,)) + payload)
        self.seq = (s + 1) & 0xFF

    def start_tls(self, flags: int = BASE_FLAGS) -> None:
        self.write(struct.pack("<IIB23x", flags | CLIENT_SSL, 1 << 24, 45))
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def login(self, user: str, password: bytes, plugin: str = "mysql_clear_password", flags: int = BASE_FLAGS,
              tls: bool = True, collation: int = 45) -> bytes:
        """Send a HandshakeResponse41 and return the server's next packet."""
        if tls:
            flags |= CLIENT_SSL
        auth = password + b"\x00"
        body = struct.pack("<IIB23x", flags, 1 << 24, collation) + user.encode() + b"\x00"
        body += _lenenc(len(auth)) + auth + plugin.encode() + b"\x00"
        self.write(body)
        return self.read()

    def command(self, payload: bytes) -> bytes:
        self.seq = 0
        self.write(payload)
        return self.read()

    def is_closed_by_server(self) -> bool:
        """True when the server has closed the connection (reads EOF / reset)."""
        try:
            self.sock.settimeout(10)
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError, OSError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def err_code(packet: bytes) -> int | None:
    return int.from_bytes(packet[1:3], "little") if packet[:1] == b"\xff" else None


def _lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    return b"\xfd" + n.to_bytes(3, "little")

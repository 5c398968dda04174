"""A raw client for fuzzing a live proxy: RawClient (tests/integration/rawclient.py) plus what a
fuzzer needs to stay in step with the server after sending nonsense.

The problem it solves: after a random command, how many packets come back is unknown (none for
COM_STMT_CLOSE, a result set, an ERR, or the connection closes). So each fuzzed command is
followed, pipelined, by a *sentinel* query `SELECT '<unique text>'`; every packet read before
the sentinel's answer (recognized by its column definition) belongs to the fuzzed command.
Every read is bounded by the socket timeout, so a proxy that stops answering fails the test
instead of hanging it."""

from __future__ import annotations

import itertools
import socket
import ssl
from dataclasses import dataclass, field

from proxy.protocol.errors import ER
from tests.integration.rawclient import BASE_FLAGS, RawClient

READ_TIMEOUT_S = 10.0  # a failure detector: the proxy answers a sentinel in milliseconds
_sentinels = itertools.count()


def packet(payload: bytes, seq: int = 0) -> bytes:
    """One wire packet (no 16 MiB split: fuzz payloads are small)."""
    return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload


def err_code(payload: bytes) -> int | None:
    return int.from_bytes(payload[1:3], "little") if payload[:1] == b"\xff" and len(payload) >= 3 else None


def is_internal_error(payload: bytes) -> bool:
    """The proxy's answer to an exception it did not expect (a parser's IndexError, a bug):
    `jitproxy could not process this command (incident ...)`. A total parser never causes it."""
    return err_code(payload) == ER.INTERNAL and b"could not process" in payload


@dataclass
class Exchange:
    """What came back for one fuzzed command."""

    packets: list[bytes] = field(default_factory=list)
    closed: bool = False  # the proxy closed the connection (after an ERR, or on COM_QUIT)


class FuzzClient(RawClient):
    def __init__(self, port: int, timeout_s: float = READ_TIMEOUT_S) -> None:
        super().__init__(port, timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def logged_in(cls, proxy, user: str = "dev", flags: int = BASE_FLAGS) -> FuzzClient:
        """Over TLS, logged in with a fresh token (fails the test if the proxy refuses)."""
        client = cls(proxy.port)
        client.start_tls(flags)
        reply = client.login(user, proxy.token(user).encode(), flags=flags)
        assert reply[:1] == b"\x00", f"login refused: {reply!r}"
        return client

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def exchange(self, payload: bytes) -> Exchange:
        """Send one command (sequence 0) and the sentinel behind it; the fuzzed command's answer."""
        return self.exchange_raw(packet(payload))

    def exchange_raw(self, data: bytes) -> Exchange:
        """Send `data` (whole packets, any content) then the sentinel; read up to the sentinel's
        answer. A connection the proxy closes ends the exchange (`closed`); no answer within
        READ_TIMEOUT_S fails the test."""
        tag = f"fuzz-sentinel-{next(_sentinels)}".encode()
        out = Exchange()
        try:
            self.sock.sendall(data + packet(b"\x03SELECT '" + tag + b"'"))
            while True:
                payload = self.read()
                if payload.startswith(b"\x03def") and tag in payload:
                    # The sentinel's column definition; its column count was the packet before.
                    out.packets.pop()
                    for _ in range(3):  # EOF, the row, EOF
                        self.read()
                    break
                out.packets.append(payload)
        except TimeoutError:
            raise AssertionError(f"no answer within {READ_TIMEOUT_S} s; got {out.packets!r}") from None
        except (ConnectionError, ssl.SSLError, OSError):
            out.closed = True
        return out

    @property
    def connection_id(self) -> int:
        """The proxy's id for this connection (from the greeting)."""
        version_end = self.handshake.index(b"\x00", 1)
        return int.from_bytes(self.handshake[version_end + 1 : version_end + 5], "little")

    def read_response(self) -> list[bytes]:
        """One whole answer: OK, ERR, or a result set (text or binary) up to its final EOF."""
        first = self.read()
        if first[:1] in (b"\x00", b"\xff"):
            return [first]
        out = [first]
        for _ in range(first[0]):  # column definitions (fewer than 251 in these tests)
            out.append(self.read())
        out.append(self.read())  # EOF after the columns (no DEPRECATE_EOF)
        while True:
            row = self.read()
            out.append(row)
            if row[:1] == b"\xff" or (row[:1] == b"\xfe" and len(row) < 9):
                return out

    def waiting_for_body(self, proxy) -> bool:
        """The proxy's command loop for this connection has read a packet header and waits for
        its body: its stream's sequence moved to 1 and nothing is buffered (a test-only look at
        the in-process proxy's internals, to send a body on its own deterministically)."""
        session = proxy.ctx.sessions.get(self.connection_id)
        stream = session.connection.stream if session is not None and session.connection is not None else None
        return stream is not None and stream._seq == 1 and not stream.reader._buffer  # noqa: SLF001

    def prepare(self, sql: bytes) -> tuple[int, int]:
        """COM_STMT_PREPARE → (statement id, number of parameters); the definitions are read."""
        self.seq = 0
        self.write(b"\x16" + sql)
        first = self.read()
        assert first[:1] == b"\x00", f"PREPARE refused: {first!r}"
        stmt_id = int.from_bytes(first[1:5], "little")
        columns, params = int.from_bytes(first[5:7], "little"), int.from_bytes(first[7:9], "little")
        for count in (params, columns):
            if count:
                for _ in range(count + 1):  # the definitions and their EOF (no DEPRECATE_EOF)
                    self.read()
        return stmt_id, params

    def close_quietly(self) -> None:
        try:
            self.sock.settimeout(1)
            self.sock.sendall(packet(b"\x01"))  # COM_QUIT
        except (OSError, ssl.SSLError):
            pass
        self.close()

"""Connections that send garbage continuously, each in its own thread, for the watchdog test:
before login (random bytes after the greeting), after login (random commands, hostile EXECUTEs
of a real statement, unframed bytes), and stallers (a header promising bytes that never come,
held open). Seeded: the same garbage every run. Each records what it sent and any internal
error it was answered with; they stop when `stop` is set."""

from __future__ import annotations

import random
import socket
import ssl
import struct
import threading
from collections import Counter

from tests.fuzz.prepared_model import SQL
from tests.fuzz.wire_client import FuzzClient, is_internal_error, packet

SOCKET_TIMEOUT_S = 3.0
# Every command byte but COM_QUIT, the COM_STMT_* ones (ids read from the body) three times over.
_COMMANDS = [c for c in range(0x21) if c != 0x01] + [0x17, 0x18, 0x19, 0x1A, 0x1C] * 2


def _length(rng: random.Random) -> int:
    """Body lengths skewed to the short ones, where fixed-size fields are cut (0-9 bytes)."""
    return rng.randint(0, 9) if rng.random() < 0.7 else rng.randint(10, 48)
_ERRORS = (OSError, ssl.SSLError, ConnectionError, AssertionError, ValueError)


class Garbage:
    def __init__(self, proxy, seed: int = 1) -> None:
        self.proxy = proxy
        self.stop = threading.Event()
        self.sent: Counter[str] = Counter()  # sends, by kind
        self.internal_errors: list[bytes] = []
        self._seed = seed
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self, prelogin: int = 2, postlogin: int = 2, stallers: int = 1) -> None:
        kinds = [self._prelogin] * prelogin + [self._postlogin] * postlogin + [self._staller] * stallers
        for i, target in enumerate(kinds):
            t = threading.Thread(target=target, args=(random.Random(self._seed * 100 + i),), daemon=True,
                                 name=f"garbage-{target.__name__}-{i}")
            self.threads.append(t)
            t.start()

    def join(self, timeout_s: float = 10.0) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout_s)

    def _count(self, kind: str, answers: list[bytes] = ()) -> None:
        with self._lock:
            self.sent[kind] += 1
            self.internal_errors += [a for a in answers if is_internal_error(a)]

    # -- the senders -----------------------------------------------------------------------

    def _prelogin(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=SOCKET_TIMEOUT_S) as s:
                    s.recv(4096)
                    s.sendall(rng.randbytes(rng.randint(1, 300)))
                    self._count("prelogin")
            except _ERRORS:
                pass

    def _postlogin(self, rng: random.Random) -> None:
        client: FuzzClient | None = None
        stmt_id = 0
        while not self.stop.is_set():
            try:
                if client is None:
                    client = FuzzClient.logged_in(self.proxy)
                    client.sock.settimeout(SOCKET_TIMEOUT_S)
                    stmt_id, _ = client.prepare(SQL)
                roll = rng.random()
                if roll < 0.1:  # unframed bytes: the proxy answers a framing error and closes
                    client.send_raw(rng.randbytes(rng.randint(1, 64)))
                    client.close()
                    client = None
                    self._count("postlogin")
                    continue
                if roll < 0.3:
                    head = struct.pack("<IBI", stmt_id, rng.randrange(256), 1)
                    payload = b"\x17" + head + rng.randbytes(_length(rng))
                else:
                    command = rng.choice(_COMMANDS)
                    payload = bytes((command,)) + rng.randbytes(_length(rng))
                ex = client.exchange(payload)
                self._count("postlogin", ex.packets)
                if ex.closed:
                    client.close()
                    client = None
            except _ERRORS:
                if client is not None:
                    client.close()
                client = None
        if client is not None:
            client.close()

    def _staller(self, rng: random.Random) -> None:
        """A header promising bytes that never come, before login and after: each held open."""
        held: list[object] = []
        try:
            while not self.stop.is_set() and len(held) < 20:
                try:
                    s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=SOCKET_TIMEOUT_S)
                    s.recv(4096)
                    s.sendall((60_000).to_bytes(3, "little") + b"\x01" + b"x" * 10)
                    held.append(s)
                    client = FuzzClient.logged_in(self.proxy)
                    client.send_raw(packet(b"\x03SELECT " + b"1" * 100)[:20])  # a query cut short
                    held.append(client)
                    self._count("stall")
                except _ERRORS:
                    pass
            self.stop.wait()
        finally:
            for h in held:
                h.close()

"""A raw asyncio TCP byte relay: the floor for any Python hop in front of MariaDB.

Every accepted client connection gets its own upstream connection; bytes are copied both ways
unchanged, so TLS (and the MySQL handshake, auth and everything after) passes through end to
end: the client verifies MariaDB's certificate, not ours. No parsing, no authorization, no
audit. It runs as its own process, so its CPU time and RSS can be read from /proc.

    python bench/relay.py --upstream-port 3306 [--listen-port 0] [--port-file FILE] [--no-uvloop]

Design, after ../shared/notes/performance.md: a BufferedProtocol per side (recv_into one
preallocated buffer: plain asyncio's 256 KiB bytes-per-read mmap/munmap trap does not apply),
TCP_NODELAY, and back-pressure (a side whose write buffer is full pauses reading on the other
side). uvloop when it is installed, unless --no-uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Any

BUFFER = 64 * 1024  # TLS records are at most 16 KiB; 2 buffers per relayed connection


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class Side(asyncio.BufferedProtocol):
    """One end of a relayed connection; `peer` is the other end."""

    def __init__(self, peer: Side | None = None) -> None:
        self.peer = peer
        self.transport: Any = None  # asyncio.Transport, or uvloop's (not a subclass of it)
        self.buffer = memoryview(bytearray(BUFFER))
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _nodelay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the transport may keep what it cannot send at once, and the buffer is reused.
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(bytes(self.buffer[:nbytes]))

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost closes the other

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()  # flushes what is buffered first

    # Back-pressure: our transport's write buffer is full → stop reading from the peer.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()


class Client(Side):
    """The accepted side: connects upstream, reading nothing until the upstream side is up."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.upstream = (host, port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: Side(self), *self.upstream)
        except OSError as e:
            print(f"relay: upstream {self.upstream}: {e}", file=sys.stderr)
            if self.transport is not None:
                self.transport.close()
            return
        self.peer = upstream
        if self.closed:
            upstream.transport.close()
        elif self.transport is not None:
            self.transport.resume_reading()


async def main(opts: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(opts.upstream_host, opts.upstream_port),
                                      opts.listen_host, opts.listen_port, reuse_address=True, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if opts.port_file:
        Path(opts.port_file).write_text(str(port))
    print(f"relay: {opts.listen_host}:{port} -> {opts.upstream_host}:{opts.upstream_port} "
          f"({type(loop).__module__.split('.')[0]})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen-host", default="127.0.0.1")
    ap.add_argument("--listen-port", type=int, default=0, help="0: any free port (see --port-file)")
    ap.add_argument("--upstream-host", default="127.0.0.1")
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--port-file", help="write the listening port here once listening")
    ap.add_argument("--no-uvloop", action="store_true", help="plain asyncio even when uvloop is installed")
    opts = ap.parse_args()
    if not opts.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main(opts))
            return
    asyncio.run(main(opts))


if __name__ == "__main__":
    cli()

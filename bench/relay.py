"""A raw asyncio TCP byte relay: the floor for any Python hop in front of MariaDB.

Every accepted client connection gets its own upstream connection; bytes are copied both ways
unchanged, so TLS (and the MySQL handshake, auth and everything after) passes through end to
end: the client verifies MariaDB's certificate, not ours. No parsing, no authorization, no
audit. It runs as its own process, so its CPU time and RSS can be read from /proc.

    python bench/relay.py --upstream-port 3306 [--listen-port 0] [--port-file FILE] [--no-uvloop]
    python bench/relay.py --upstream-port 3306 --tls-cert C --tls-key K --upstream-ca CA

With --tls-cert/--tls-key/--upstream-ca it TERMINATES TLS on both hops, as jitproxy does: the
MySQL greeting and the client's SSLRequest pass in clear, then the relay runs TLS with the client
(our certificate) and, separately, with MariaDB (verified against --upstream-ca), and copies the
decrypted bytes between them, still without parsing anything. It is the floor for a proxy that
must read the statements: what TLS on both hops costs in this process, with nothing else.

Design: a BufferedProtocol per side (recv_into one
preallocated buffer: plain asyncio's 256 KiB bytes-per-read mmap/munmap trap does not apply),
TCP_NODELAY, and back-pressure (a side whose write buffer is full pauses reading on the other
side). uvloop when it is installed, unless --no-uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
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


class TlsSide(asyncio.Protocol):
    """One end of a TLS-terminated relay (plain Protocol: uvloop's TLS transport hands over the
    decrypted bytes as one object, which is written on as is)."""

    def __init__(self) -> None:
        self.peer: TlsSide | None = None
        self.transport: Any = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    # closing and back-pressure as for the byte relay
    eof_received = Side.eof_received
    connection_lost = Side.connection_lost
    pause_writing = Side.pause_writing
    resume_writing = Side.resume_writing


async def tls_terminating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opts: argparse.Namespace,
                          server_ctx: ssl.SSLContext, upstream_ctx: ssl.SSLContext) -> None:
    """Greeting and SSLRequest in clear, then TLS with each side separately, then a byte relay."""
    _nodelay(writer.transport)
    up_reader, up_writer = await asyncio.open_connection(opts.upstream_host, opts.upstream_port)
    _nodelay(up_writer.transport)
    try:
        header = await up_reader.readexactly(4)
        writer.write(header + await up_reader.readexactly(int.from_bytes(header[:3], "little")))
        header = await reader.readexactly(4)
        payload = await reader.readexactly(int.from_bytes(header[:3], "little"))
        if len(payload) != 32:  # a HandshakeResponse without TLS: refuse (we terminate TLS only)
            writer.close()
            up_writer.close()
            return
        up_writer.write(header + payload)
        await up_writer.start_tls(upstream_ctx, server_hostname=opts.upstream_tls_name)
        await _client_tls(reader, writer, server_ctx)
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
        writer.close()
        up_writer.close()
        return
    client, upstream = TlsSide(), TlsSide()
    client.peer, upstream.peer = upstream, client
    # Anything the stream readers already hold goes first, then the protocols take over.
    sides = ((client, reader, writer.transport), (upstream, up_reader, up_writer.transport))
    for side, _, transport in sides:
        side.transport = transport
    for side, stream_reader, transport in sides:
        pending = bytes(stream_reader._buffer)  # noqa: SLF001 - a benchmark's shortcut
        stream_reader._buffer.clear()  # noqa: SLF001
        transport.set_protocol(side)
        if pending:
            side.data_received(pending)


async def _client_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ssl.SSLContext) -> None:
    """Server-side TLS after the SSLRequest. The client sends its ClientHello without waiting, so
    it may already sit in the StreamReader: hand it to the TLS protocol once that is in place."""
    loop = asyncio.get_running_loop()
    transport = writer.transport
    plain = transport.get_protocol()
    task = loop.create_task(loop.start_tls(transport, plain, ctx, server_side=True))
    for _ in range(10):
        await asyncio.sleep(0)
        if transport.get_protocol() is not plain or task.done():
            break
    tls_protocol = transport.get_protocol()
    leftover = bytes(reader._buffer)  # noqa: SLF001
    reader._buffer.clear()  # noqa: SLF001
    if leftover and tls_protocol is not plain:
        def feed() -> None:
            buf = tls_protocol.get_buffer(len(leftover))
            buf[: len(leftover)] = leftover
            tls_protocol.buffer_updated(len(leftover))
        loop.call_soon(feed)
    new_transport = await task
    writer._transport = new_transport  # noqa: SLF001
    reader._transport = new_transport  # noqa: SLF001


async def main(opts: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    if opts.tls_cert:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
        upstream_ctx = ssl.create_default_context(cafile=opts.upstream_ca)
        server = await asyncio.start_server(lambda r, w: tls_terminating(r, w, opts, server_ctx, upstream_ctx),
                                            opts.listen_host, opts.listen_port, reuse_address=True, backlog=1024)
    else:
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
    ap.add_argument("--tls-cert", help="terminate TLS on both hops: our certificate for clients")
    ap.add_argument("--tls-key", help="its key")
    ap.add_argument("--upstream-ca", help="CA that signed the database's certificate (verified)")
    ap.add_argument("--upstream-tls-name", default="localhost", help="name checked in the database's certificate")
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

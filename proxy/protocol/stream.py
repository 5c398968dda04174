"""Client-side packet framing. Replaces mysql-mimic's MysqlStream to fix:
the TLS upgrade that loses a ClientHello already buffered (half of handshakes hung 60 s), the
missing cap on a logical packet's size, and to add a raw write for relayed upstream bytes."""

from __future__ import annotations

import asyncio
import ssl

from mysql_mimic.stream import ConnectionClosed

from proxy.protocol.errors import ER, ClientError
from proxy.mysql.wire import MAX_PAYLOAD

__all__ = ["ClientStream", "ConnectionClosed"]


class ClientStream:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_packet_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_packet_bytes = max_packet_bytes
        self._seq = 0
        self._buffer = bytearray()
        # A packet's header has been read and its body not yet: the bytes arriving now are that
        # body, whatever they look like (the fast path must not take them for a new packet).
        self.reading = False

    @property
    def is_tls(self) -> bool:
        return self.writer.get_extra_info("ssl_object") is not None

    async def read(self) -> bytes:
        """One logical payload (reassembled from 16 MiB packets), at most max_packet_bytes."""
        try:
            return await self._read()
        finally:
            self.reading = False

    async def _read(self) -> bytes:
        data = bytearray()
        while True:
            try:
                header = await self.reader.readexactly(4)
            except asyncio.IncompleteReadError:
                raise ConnectionClosed() from None
            self.reading = True
            length = header[0] | (header[1] << 8) | (header[2] << 16)
            seq = header[3]
            if seq != self._seq:
                raise ClientError(ER.PACKETS_OUT_OF_ORDER, "Got packets out of order", keep_connection=False)
            self._seq = (self._seq + 1) & 0xFF
            if len(data) + length > self.max_packet_bytes:
                raise ClientError(
                    ER.NET_PACKET_TOO_LARGE,
                    f"Got a packet bigger than jitproxy's limit ({self.max_packet_bytes} bytes)",
                    keep_connection=False,
                )
            if length:
                try:
                    data += await self.reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    raise ConnectionClosed() from None
            if length < MAX_PAYLOAD:
                return bytes(data)

    def write_many(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            pos = 0
            while True:
                chunk = payload[pos : pos + MAX_PAYLOAD]
                self._buffer += len(chunk).to_bytes(3, "little") + bytes((self._seq,))
                self._buffer += chunk
                self._seq = (self._seq + 1) & 0xFF
                pos += len(chunk)
                if len(chunk) < MAX_PAYLOAD:
                    break

    async def write(self, payload: bytes, drain: bool = True) -> None:
        self.write_many([payload])
        if drain:
            await self.drain()

    async def drain(self) -> None:
        if self._buffer:
            self.writer.write(bytes(self._buffer))
            self._buffer.clear()
        await self.writer.drain()

    def reset_seq(self) -> None:
        self._seq = 0

    async def start_tls(self, context: ssl.SSLContext, timeout_s: float = 10.0) -> None:
        """Upgrade to TLS after an SSLRequest. MySQL clients send their ClientHello without
        waiting, so the StreamReader may already hold it, or receive it before start_tls swaps
        protocols: once the swap is done (reading paused), hand those bytes to the TLS protocol,
        ahead of anything read from the socket later."""
        transport = self.writer.transport
        plain_protocol = transport.get_protocol()
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            loop.start_tls(
                transport,
                plain_protocol,
                context,
                server_side=True,
                ssl_handshake_timeout=timeout_s,
            )
        )
        for _ in range(10):  # start_tls swaps the protocol in its first step
            await asyncio.sleep(0)
            if transport.get_protocol() is not plain_protocol or task.done():
                break
        tls_protocol = transport.get_protocol()
        leftover = bytes(self.reader._buffer)  # noqa: SLF001 - see docstring
        self.reader._buffer.clear()  # noqa: SLF001
        if leftover and tls_protocol is not plain_protocol:

            def feed() -> None:
                buf = tls_protocol.get_buffer(len(leftover))
                buf[: len(leftover)] = leftover
                tls_protocol.buffer_updated(len(leftover))

            loop.call_soon(feed)  # after SSLProtocol.connection_made and resume_reading
        new_transport = await task
        self.writer._transport = new_transport  # noqa: SLF001
        self.reader._transport = new_transport  # noqa: SLF001

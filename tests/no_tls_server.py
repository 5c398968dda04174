"""A MySQL server that offers no TLS and asks for mysql_clear_password: what a man in the middle
downgrading the upstream hop looks like. It records what the client sends after its greeting."""

from __future__ import annotations

import asyncio

from mysql_mimic import packets
from mysql_mimic.charset import CharacterSet
from mysql_mimic.types import Capabilities, ServerStatus


async def server_without_tls(received: list[bytes]) -> asyncio.Server:
    """Listening on 127.0.0.1 (ephemeral port); each client's first reply lands in `received`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caps = Capabilities.CLIENT_PROTOCOL_41 | Capabilities.CLIENT_SECURE_CONNECTION | Capabilities.CLIENT_PLUGIN_AUTH
        hs = packets.make_handshake_v10(capabilities=caps, server_charset=CharacterSet.utf8mb4,
                                        server_version="8.0.36", connection_id=1, auth_data=b"x" * 20 + b"\0",
                                        status_flags=ServerStatus(0), auth_plugin_name="mysql_clear_password")
        writer.write(len(hs).to_bytes(3, "little") + b"\0" + hs)
        await writer.drain()
        try:
            received.append(await asyncio.wait_for(reader.read(65536), 2))
        except asyncio.TimeoutError:
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)

"""asyncio transport helpers both sides of the proxy use: a protocol whose incoming bytes a
callback may claim first (the fast path, protocol/fastpath.py, on the client's and the
database's sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Intercepting(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol whose incoming bytes `interceptor` may claim before they reach the
    StreamReader, and whose losses and flow-control changes it hears of. Installed on a live
    protocol by `intercept` (a class swap: the protocol's state and its StreamWriter stay)."""

    interceptor: Callable[[bytes], bool] | None = None
    on_lost: Callable[[], None] | None = None
    on_writable: Callable[[bool], None] | None = None

    def data_received(self, data: bytes) -> None:
        claim = self.interceptor
        if claim is not None and claim(data):
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        lost = self.on_lost
        if lost is not None:
            lost()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        lost = self.on_lost
        if lost is not None:
            lost()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.on_writable is not None:
            self.on_writable(False)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_writable is not None:
            self.on_writable(True)


def intercept(writer: asyncio.StreamWriter) -> Intercepting | None:
    """The writer's protocol, made an `Intercepting` one (None: not a plain StreamReaderProtocol,
    e.g. a test double: no fast path on it)."""
    protocol = getattr(writer, "_protocol", None)
    if type(protocol) is asyncio.StreamReaderProtocol:
        protocol.__class__ = Intercepting
    return protocol if isinstance(protocol, Intercepting) else None

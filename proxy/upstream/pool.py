"""Upstream connections of the shared DB identity, pinned one per client session.

Idle connections are kept per (client profile, current database) so a session starts on a
connection whose wire format and default database already match; a connection is reset
(COM_RESET_CONNECTION) before it is reused, in the background, off the client's path.
A broken or mid-response connection is closed, never pooled."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import structlog

from proxy.upstream.connection import ClientProfile, UpstreamConnection, UpstreamError

log = structlog.get_logger("jitproxy.upstream")

Connector = Callable[[ClientProfile], Awaitable[UpstreamConnection]]


class UpstreamPool:
    def __init__(
        self,
        connector: Connector,
        max_idle: int = 8,
        max_size: int = 200,
        max_idle_time_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connector
        self._max_idle = max_idle
        self._max_idle_time_s = max_idle_time_s
        self._clock = clock
        self._idle: dict[tuple[ClientProfile, str | None], list[UpstreamConnection]] = defaultdict(list)
        self._slots = asyncio.Semaphore(max_size)
        self._background: set[asyncio.Task[None]] = set()
        self.server_version: str | None = None
        self.opened = 0

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def acquire(self, profile: ClientProfile, database: str | None) -> UpstreamConnection:
        """A connection for a new session, already on `database` (None: no database). Raises
        UpstreamError, or returns a connection the caller must `release`."""
        await self._slots.acquire()
        try:
            conn = self._take_idle(profile, database)
            if conn is None:
                conn = self._take_idle_any_db(profile) if database is not None else None
            if conn is None:
                conn = await self._connect(profile)
                self.opened += 1
                self.server_version = conn.server_version
            if database is not None and conn.database != database:
                outcome = await conn.init_db(database)
                if outcome.error:
                    self.release(conn)
                    raise UpstreamError(outcome.error.message, "init_db")
            return conn
        except BaseException:
            self._slots.release()
            raise

    def _take_idle(self, profile: ClientProfile, database: str | None) -> UpstreamConnection | None:
        bucket = self._idle.get((profile, database))
        now = self._clock()
        while bucket:
            conn = bucket.pop()
            if conn.closed or now - conn.last_used > self._max_idle_time_s:
                conn.close()
                continue
            return conn
        return None

    def _take_idle_any_db(self, profile: ClientProfile) -> UpstreamConnection | None:
        for (p, db), _bucket in list(self._idle.items()):
            if p == profile and db is not None:
                conn = self._take_idle(p, db)
                if conn is not None:
                    return conn
        return None

    def release(self, conn: UpstreamConnection, reusable: bool = True) -> None:
        """Give a session's connection back. Reset happens in the background."""
        self._slots.release()
        if not reusable or conn.closed or self._max_idle == 0:
            conn.close()
            return
        task = asyncio.get_running_loop().create_task(self._recycle(conn))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _recycle(self, conn: UpstreamConnection) -> None:
        try:
            await asyncio.wait_for(conn.reset(), timeout=10)
            db = await asyncio.wait_for(conn.query_scalar("SELECT DATABASE()"), timeout=10)
            conn.database = db.decode("utf-8") if db is not None else None
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as e:  # noqa: BLE001 - any failure: the connection is simply not reused
            log.info("upstream connection dropped on reset", error=type(e).__name__)
            conn.close()
            return
        if self.idle_count() >= self._max_idle:
            conn.close()
            return
        self._idle[(conn.profile, conn.database)].append(conn)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for bucket in self._idle.values():
            for conn in bucket:
                conn.close()
        self._idle.clear()

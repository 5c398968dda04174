"""The workflow inside a running proxy: the grants in effect (proxy.workflow.grants
`EffectiveGrants`) kept fresh by polling the store's revision, pending requests expired on
time, and the admin API served.

Why polling and not PostgreSQL LISTEN/NOTIFY: one mechanism for both backends (several
processes may share one SQLite file too), nothing to lose when a connection drops, and the cost
is one indexed single-row read per replica per interval (0.5 s by default). Expiry needs no
message at all: a grant's end is checked against the clock on every statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from proxy.workflow.grants import EffectiveGrants


log = structlog.get_logger("jitproxy.workflow")


class ApiServer:
    """uvicorn on a socket bound here (so port 0 works and the port is known at once)."""

    def __init__(self, app: Any, host: str, port: int, cert: str, key: str, reuse_port: bool = False) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        import uvicorn  # only when the API is served (~15 MB)

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the proxy owns the process's signals

        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False,
            ssl_certfile=cert, ssl_keyfile=key, server_header=False, date_header=False,
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=5)
        self.sock.close()


class Poller:
    """Keeps `EffectiveGrants` fresh and expires pending requests, until stopped. Times are the
    event loop's monotonic clock (`poll_once(now)` takes it, so tests drive it directly)."""

    def __init__(self, grants: EffectiveGrants, interval_s: float, expire: Callable[[], Any] | None,
                 expire_every_s: float = 15.0, max_staleness_s: float = 30.0,
                 sweep: Callable[[], Any] | None = None) -> None:
        self.grants = grants
        self.sweep = sweep  # after every poll, success or not (on_expiry: disconnect)
        self.max_staleness_s = max_staleness_s
        self.interval_s = interval_s
        self.expire = expire
        self.expire_every_s = expire_every_s
        self._task: asyncio.Task[None] | None = None
        self.errors = 0
        self._next_expiry: float | None = None
        self._last_success: float | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.poll_once(loop.time())
            await asyncio.sleep(self.interval_s)

    async def poll_once(self, now: float) -> None:
        if self._last_success is None:
            self._last_success = self._next_expiry = now
        try:
            if await self.grants.refresh():
                log.info("store grants refreshed", revision=self.grants.revision)
            if self.expire is not None and now >= (self._next_expiry or now):
                self._next_expiry = now + self.expire_every_s
                await asyncio.to_thread(self.expire)
            self.errors = 0
            self._last_success = now
        except Exception as e:  # noqa: BLE001 - keep polling
            self.errors += 1
            if now - self._last_success > self.max_staleness_s and self.grants.revision != -1:
                self.grants.forget_store()
                log.error("state store unreachable too long: its grants no longer count", failures=self.errors)
            elif self.errors in (1, 10) or self.errors % 100 == 0:
                log.error("state store poll failed; keeping the last grants for now", error=type(e).__name__,
                          detail=str(e)[:200], failures=self.errors)
        if self.sweep is not None:
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a bug here must not stop the polling
                log.exception("session sweep failed")

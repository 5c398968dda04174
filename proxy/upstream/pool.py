"""Upstream connections of the shared DB identity, pinned one per client session.

Idle connections are kept per (client profile, current database) so a session starts on a
connection whose wire format and default database already match; a connection is reset
(COM_RESET_CONNECTION) before it is reused, in the background, off the client's path.
A broken or mid-response connection is closed, never pooled.

The database may go away under us (an Aurora failover moves the cluster endpoint; a restart
closes every connection) and come back without the proxy restarting:
- an idle connection unused for `ping_after_idle_s` is pinged (COM_PING, `ping_timeout_s`)
  before a session gets it; a dead one means the endpoint moved or restarted, so every idle
  connection is dropped (they share the endpoint) and a new one is opened;
- opening a connection is retried with exponential backoff and jitter while the failure is
  transient ("unreachable", "timeout"); a refusal (authentication, TLS) fails at once. No new
  attempt starts after `connect_deadline_s`; each attempt is bounded by the connector's own
  connect timeout;
- `health()` says whether the last attempt to get a working connection succeeded, for
  operators; the transitions are logged once each."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import structlog

from proxy.mysql import wire
from proxy.upstream.connection import ClientProfile, UpstreamConnection, UpstreamError
from proxy.upstream.relay import Expect

log = structlog.get_logger("jitproxy.upstream")

Connector = Callable[[ClientProfile], Awaitable[UpstreamConnection]]

# UpstreamError.kind values worth another attempt (connection.open_connection classifies them).
TRANSIENT_KINDS = frozenset({"unreachable", "timeout"})
# health()["last_error"] when a pooled connection fails its ping / a connect fails oddly.
STALE_CONNECTION = "an idle connection to the database was found dead"
SETUP_FAILED = "upstream connection setup failed"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class UpstreamPool:
    def __init__(
        self,
        connector: Connector,
        max_idle: int = 8,
        max_size: int = 200,
        max_idle_time_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        ping_after_idle_s: float = 1.0,
        ping_timeout_s: float = 2.0,
        max_pings_per_acquire: int = 2,
        connect_deadline_s: float = 5.0,
        acquire_timeout_s: float = 3.0,
        name: str = "default",
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 1.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`clock` (monotonic seconds, the clock of `UpstreamConnection.last_used`) measures
        idle time and the connect deadline; `sleep` waits between connect attempts; `jitter`
        returns a number in [0, 1); `now` stamps `health()`. Tests inject all four."""
        self._connect = connector
        self._max_idle = max_idle
        self._max_idle_time_s = max_idle_time_s
        self._clock = clock
        self.ping_after_idle_s = ping_after_idle_s
        self.ping_timeout_s = ping_timeout_s
        self.max_pings_per_acquire = max_pings_per_acquire
        self.connect_deadline_s = connect_deadline_s
        self.acquire_timeout_s = acquire_timeout_s
        self.name = name
        self.max_size = max_size
        self.waiting = 0  # sessions waiting for a free connection
        self.exhausted = 0  # sessions told "too many connections" (stats)
        # Set by the health pinger when the database stops answering (a hang, not a refusal):
        # new sessions fail at once instead of waiting out every timeout.
        self.not_responding_since: datetime | None = None
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._jitter = jitter
        self._now = now
        self._idle: dict[tuple[ClientProfile, str | None], list[UpstreamConnection]] = defaultdict(list)
        self._slots = asyncio.Semaphore(max_size)
        self._background: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by drop_idle: resets begun before it do not pool
        self._in_use = 0
        self._state = "unknown"
        self._last_error: str | None = None
        self._last_ok: datetime | None = None
        self._last_failure: datetime | None = None
        self.server_version: str | None = None
        # What a fresh session on this server starts with (from the last connection opened): the
        # proxy's greeting tells clients the same, since drivers trust it (autocommit above all).
        self.session_status = wire.SERVER_STATUS_AUTOCOMMIT
        self.collation_id: int | None = None
        self.opened = 0

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def health(self) -> dict[str, Any]:
        """For operators. `state`: "up" after a connect or a ping succeeded, "down" after a
        connect failed, "unknown" before either (a failed ping only records `last_error` and
        `last_failure`: the connect that follows it decides the state). `last_error` is the
        public message only, never a credential or a host detail; times are ISO 8601 UTC."""
        return {
            "state": self._state,
            "last_error": self._last_error,
            "last_ok": self._last_ok.isoformat() if self._last_ok else None,
            "last_failure": self._last_failure.isoformat() if self._last_failure else None,
            "opened": self.opened,
            "idle": self.idle_count(),
            "in_use": self._in_use,
            "max_size": self.max_size,
            "waiting": self.waiting,
            "exhausted": self.exhausted,
            "responding": self.not_responding_since is None,
        }

    async def acquire(self, profile: ClientProfile, database: str | None, side: bool = False) -> UpstreamConnection:
        """A connection for a new session, already on `database` (None: no database). Raises
        UpstreamError, or returns a connection the caller must `release`. Waits at most
        acquire_timeout_s for one of max_size; `side` (the proxy's own KILL) takes none of them."""
        if self.not_responding_since is not None and not side:
            raise UpstreamError("the database is not responding", "health ping unanswered", "not_responding")
        if not side:
            await self._wait_for_slot()
        try:
            conn = await self._checkout_idle(profile, database)
            if conn is None:
                conn = await self._open(profile)
        except BaseException:
            if not side:
                self._slots.release()
            raise
        if side:
            return conn
        self._in_use += 1
        if database is not None and conn.database != database:
            try:
                outcome = await conn.init_db(database)
            except BaseException:
                self.release(conn, reusable=False)
                raise
            if outcome.error:
                self.release(conn)
                raise UpstreamError(outcome.error.message, "init_db")
        return conn

    async def _wait_for_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.acquire_timeout_s)
        except TimeoutError:
            self.exhausted += 1
            log.warning("upstream pool exhausted", instance=self.name, max_size=self.max_size, waited_s=self.acquire_timeout_s)
            raise UpstreamError(f"too many connections to {self.name} (all {self.max_size} in use), retry",
                                "pool exhausted", "exhausted") from None
        finally:
            self.waiting -= 1

    # -- checkout: idle connections, pinged when they have been idle a while -------------------

    async def _checkout_idle(self, profile: ClientProfile, database: str | None) -> UpstreamConnection | None:
        pings = 0
        while True:
            conn = self._take_idle(profile, database)
            if conn is None and database is not None:
                conn = self._take_idle_any_db(profile)
            if conn is None:
                return None
            if self._clock() - conn.last_used < self.ping_after_idle_s:
                return conn
            if pings >= self.max_pings_per_acquire:
                self._idle[(conn.profile, conn.database)].append(conn)  # not known dead: keep it
                return None
            pings += 1
            if await self._ping(conn):
                return conn
            await self.drop_idle()  # they share the endpoint that just failed

    async def _ping(self, conn: UpstreamConnection) -> bool:
        error = ""
        try:
            outcome = await asyncio.wait_for(conn.request(wire.COM_PING, b"", Expect.OK), self.ping_timeout_s)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as e:  # noqa: BLE001 - timeout, reset, EOF, garbage: all mean dead
            outcome, error = None, type(e).__name__
        if outcome is not None and outcome.error is None:
            self._mark_up()
            return True
        conn.close()
        self._last_error, self._last_failure = STALE_CONNECTION, self._now()
        log.info("idle upstream connection failed its ping", error=error or "error packet",
                 idle_s=round(self._clock() - conn.last_used, 3))
        return False

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

    # -- new connections: retried while the failure is transient ------------------------------

    async def _open(self, profile: ClientProfile) -> UpstreamConnection:
        deadline = self._clock() + self.connect_deadline_s
        backoff = self.backoff_initial_s
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = await self._connect(profile)
            except UpstreamError as e:
                self._mark_down(e.public, e.detail)
                remaining = deadline - self._clock()
                if e.kind not in TRANSIENT_KINDS or remaining <= 0:
                    raise
                delay = min(backoff * (0.5 + 0.5 * self._jitter()), remaining)
                log.debug("upstream connect retry", attempt=attempt, delay_s=round(delay, 3), error=e.public)
                await self._sleep(delay)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._mark_down(SETUP_FAILED, type(e).__name__)
                raise
            self.opened += 1
            self.server_version = conn.server_version
            self.session_status = conn.status & wire.SESSION_STATUS_BITS
            self.collation_id = conn.collation_id or None
            self._mark_up()
            return conn

    def mark_not_responding(self, detail: str) -> None:
        if self.not_responding_since is None:
            self.not_responding_since = self._now()
            log.error("upstream not responding", instance=self.name, detail=detail)
        self._last_error, self._last_failure = "the database is not responding", self._now()

    def mark_responding(self) -> None:
        if self.not_responding_since is not None:
            log.warning("upstream responding again", instance=self.name,
                        since=self.not_responding_since.isoformat())
            self.not_responding_since = None
        self._mark_up()

    def _mark_up(self) -> None:
        self._last_ok = self._now()
        if self._state == "down":
            log.info("upstream up again", since=self._last_failure.isoformat() if self._last_failure else None)
        self._state = "up"

    def _mark_down(self, public: str, detail: str) -> None:
        self._last_error, self._last_failure = public, self._now()
        if self._state != "down":
            log.warning("upstream down", error=public, detail=detail)
        self._state = "down"

    # -- release, reset, drop ------------------------------------------------------------------

    def release(self, conn: UpstreamConnection, reusable: bool = True, side: bool = False) -> None:
        """Give a session's connection back. Reset happens in the background."""
        if not side:
            self._slots.release()
            self._in_use -= 1
        if not reusable or conn.closed or self._max_idle == 0:
            conn.close()
            return
        task = asyncio.get_running_loop().create_task(self._recycle(conn, self._generation))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _recycle(self, conn: UpstreamConnection, generation: int) -> None:
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
        if self.idle_count() >= self._max_idle or generation != self._generation:
            conn.close()
            return
        self._idle[(conn.profile, conn.database)].append(conn)

    async def drop_idle(self) -> int:
        """Close every idle connection (and those being reset now): after a session saw its
        upstream die, or a ping failed, the whole pool is presumed stale. Returns how many."""
        self._generation += 1
        dropped = 0
        for bucket in self._idle.values():
            for conn in bucket:
                conn.close()
                dropped += 1
        self._idle.clear()
        if dropped:
            log.info("idle upstream connections dropped", connections=dropped)
        return dropped

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for bucket in self._idle.values():
            for conn in bucket:
                conn.close()
        self._idle.clear()

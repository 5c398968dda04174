"""UpstreamPool's failover logic with a fake connector: pings on checkout after idling, dead idle
connections dropped, connect retries with backoff for transient failures only, a deadline, and
the health state. A fake clock and an injected sleep: nothing here really waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import proxy.upstream.pool as pool_module
from proxy.mysql import wire
from proxy.mysql.wire import ErrInfo
from proxy.upstream.connection import ClientProfile, UpstreamError
from proxy.upstream.pool import STALE_CONNECTION, UpstreamPool
from proxy.upstream.relay import Expect, Outcome

PROFILE = ClientProfile(deprecate_eof=False, found_rows=False, multi_results=True, ps_multi_results=True)
UNREACHABLE = ("the database is unreachable", "unreachable")
TIMEOUT = ("the database did not answer in time", "timeout")
REFUSED = ("the database refused the proxy's connection", "refused")


class Clock:
    """Monotonic seconds that move only when told (or when the fake sleep sleeps)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


class FakeConnection:
    """What the pool calls on an UpstreamConnection: request (COM_PING), reset, query_scalar,
    init_db, close, and the closed / last_used / database / profile / server_version fields."""

    def __init__(self, clock: Clock, number: int) -> None:
        self.clock = clock
        self.number = number
        self.profile = PROFILE
        self.server_version = "10.11.6-MariaDB"
        self.status = wire.SERVER_STATUS_AUTOCOMMIT
        self.collation_id = 45
        self.database: str | None = None
        self.last_used = clock()
        self.broken = False
        self.commands: list[int] = []
        self.ping: Callable[[], Any] = lambda: Outcome()  # return an Outcome or raise

    @property
    def closed(self) -> bool:
        return self.broken

    async def request(self, command: int, payload: bytes, expect: Expect | None, client: Any = None,
                      **_: Any) -> Outcome | None:
        self.commands.append(command)
        assert command == wire.COM_PING and expect is Expect.OK and client is None
        try:
            outcome = self.ping()
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
        except BaseException:
            self.broken = True
            raise
        self.last_used = self.clock()
        return outcome

    async def reset(self) -> None:
        self.last_used = self.clock()

    async def query_scalar(self, sql: str) -> bytes | None:
        assert sql == "SELECT DATABASE()"
        return self.database.encode() if self.database else None

    async def init_db(self, db: str) -> Outcome:
        if db == "missing":
            return Outcome(error=ErrInfo(1049, "42000", "Unknown database 'missing'"))
        self.database = db
        return Outcome()

    def close(self) -> None:
        self.broken = True


class Connector:
    """Opens FakeConnections; `failures` are raised first, one per attempt, in order."""

    def __init__(self, clock: Clock, failures: list[tuple[str, str]] = (), attempt_s: float = 0.0) -> None:
        self.clock = clock
        self.failures = list(failures)
        self.attempt_s = attempt_s  # how long one attempt takes (fake time)
        self.calls = 0
        self.opened: list[FakeConnection] = []

    async def __call__(self, profile: ClientProfile) -> FakeConnection:
        self.calls += 1
        self.clock.t += self.attempt_s
        if self.failures:
            public, kind = self.failures.pop(0)
            raise UpstreamError(public, f"attempt {self.calls}: password=hunter2", kind)
        conn = FakeConnection(self.clock, len(self.opened) + 1)
        self.opened.append(conn)
        return conn


class LogRecorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.records.append((level, event))

    def events(self, *names: str) -> list[str]:
        return [e for _, e in self.records if e in names]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(pool_module, "log", recorder)
    return recorder


def make_pool(clock: Clock, connector: Connector, **kw: Any) -> UpstreamPool:
    wall = datetime(2030, 1, 1, tzinfo=timezone.utc)
    kw.setdefault("jitter", lambda: 1.0)  # the upper end: delays are exactly 0.1, 0.2, 0.4 ...
    return UpstreamPool(connector, clock=clock, sleep=clock.sleep,
                        now=lambda: wall + timedelta(seconds=clock.t), **kw)


async def settle(pool: UpstreamPool) -> None:
    """Until the background resets of released connections are done (bounded)."""
    for _ in range(100):
        if not pool._background:
            return
        await asyncio.sleep(0)
    raise AssertionError("background resets did not finish")


async def pooled(pool: UpstreamPool, n: int) -> list[FakeConnection]:
    """n connections, opened and then released into the idle pool."""
    conns = [await pool.acquire(PROFILE, None) for _ in range(n)]
    for c in conns:
        pool.release(c)
    await settle(pool)
    assert pool.idle_count() == n
    return conns


def test_a_connection_idle_past_the_threshold_is_pinged_before_checkout(logs):
    async def scenario() -> None:
        clock = Clock()
        pool = make_pool(clock, Connector(clock), ping_after_idle_s=1.0)
        (conn,) = await pooled(pool, 1)

        clock.t += 0.5  # recently used: handed out as is
        assert await pool.acquire(PROFILE, None) is conn
        assert conn.commands == []
        pool.release(conn)
        await settle(pool)

        clock.t += 1.5
        assert await pool.acquire(PROFILE, None) is conn
        assert conn.commands == [wire.COM_PING]
        assert pool.opened == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("failure", ["reset", "error packet", "timeout"])
def test_a_dead_idle_connection_is_skipped_and_every_idle_one_dropped(logs, failure):
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock)
        pool = make_pool(clock, connector, ping_timeout_s=0.05)
        conns = await pooled(pool, 3)
        clock.t += 5

        def dead() -> Any:
            if failure == "reset":
                raise ConnectionResetError("upstream closed the connection")
            if failure == "error packet":  # MariaDB's goodbye on shutdown, read as the answer
                return Outcome(error=ErrInfo(1053, "08S01", "Server shutdown in progress"))
            return asyncio.Event().wait()  # never answers: the ping's timeout ends it

        for c in conns:
            c.ping = dead
        fresh = await pool.acquire(PROFILE, None)

        assert fresh not in conns and fresh is connector.opened[-1]
        assert sum(len(c.commands) for c in conns) == 1  # one ping told us enough
        assert all(c.closed for c in conns)
        assert pool.idle_count() == 0
        health = pool.health()
        assert health["last_error"] == STALE_CONNECTION and health["state"] == "up"
        assert health["in_use"] == 1 and health["opened"] == 4

    asyncio.run(scenario())


def test_pings_per_checkout_are_bounded_then_a_new_connection_is_opened(logs):
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock)
        pool = make_pool(clock, connector)
        dead = await pooled(pool, 5)
        clock.t += 5
        for c in dead:
            c.ping = lambda: (_ for _ in ()).throw(ConnectionResetError())
        await pool.acquire(PROFILE, None)
        assert sum(len(c.commands) for c in dead) == 1  # five dead connections cost one ping
        assert connector.calls == 6

        pool = make_pool(clock, connector, max_pings_per_acquire=0)
        (idle,) = await pooled(pool, 1)
        clock.t += 5
        conn = await pool.acquire(PROFILE, None)
        assert conn is not idle and idle.commands == []  # no ping left: connect anew
        assert pool.idle_count() == 1 and not idle.closed  # not known dead: kept for later

    asyncio.run(scenario())


def test_transient_connect_failures_are_retried_with_backoff_then_succeed(logs):
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock, [UNREACHABLE, TIMEOUT, UNREACHABLE])
        pool = make_pool(clock, connector)
        conn = await pool.acquire(PROFILE, None)
        assert conn is connector.opened[0]
        assert connector.calls == 4
        assert clock.slept == pytest.approx([0.1, 0.2, 0.4])
        assert pool.opened == 1 and pool.health()["state"] == "up"

    asyncio.run(scenario())


def test_backoff_is_jittered_and_capped():
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock, [UNREACHABLE] * 6)
        pool = make_pool(clock, connector, jitter=lambda: 0.0, backoff_max_s=0.3, connect_deadline_s=60)
        await pool.acquire(PROFILE, None)
        assert clock.slept == pytest.approx([0.05, 0.1, 0.15, 0.15, 0.15, 0.15])

    asyncio.run(scenario())


@pytest.mark.parametrize("refusal", [REFUSED, ("the database refused the proxy's connection", ""),
                                     ("the database's TLS certificate was not accepted", "refused")])
def test_a_refusal_is_not_retried(logs, refusal):
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock, [refusal, UNREACHABLE])
        pool = make_pool(clock, connector)
        with pytest.raises(UpstreamError) as raised:
            await pool.acquire(PROFILE, None)
        assert raised.value.public == refusal[0]
        assert connector.calls == 1 and clock.slept == []
        assert pool.health()["state"] == "down"
        # the slot came back: the next session may try again at once
        assert await pool.acquire(PROFILE, None) is connector.opened[0]

    asyncio.run(scenario())


def test_the_deadline_ends_the_retries_with_the_last_error(logs):
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock, [UNREACHABLE, TIMEOUT] * 50, attempt_s=0.25)
        pool = make_pool(clock, connector, connect_deadline_s=2.0, backoff_max_s=0.5)
        start = clock()
        with pytest.raises(UpstreamError) as raised:
            await pool.acquire(PROFILE, None)
        last = [UNREACHABLE, TIMEOUT][(connector.calls - 1) % 2]
        assert raised.value.public == last[0] and raised.value.kind == last[1]
        assert raised.value.detail == f"attempt {connector.calls}: password=hunter2"
        # no attempt starts after the deadline; the last sleep is cut to what remained
        assert clock() - start <= 2.0 + connector.attempt_s
        assert 3 <= connector.calls <= 8
        assert clock.slept[-1] <= 0.5
        assert pool.opened == 0 and pool.health()["in_use"] == 0

    asyncio.run(scenario())


def test_health_goes_up_down_up_and_logs_each_transition_once(logs):
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock)
        pool = make_pool(clock, connector, connect_deadline_s=1.0)
        assert pool.health() == {"state": "unknown", "last_error": None, "last_ok": None,
                                 "last_failure": None, "opened": 0, "idle": 0, "in_use": 0,
                                 "max_size": 200, "waiting": 0, "exhausted": 0, "responding": True}
        first = await pool.acquire(PROFILE, None)
        up = pool.health()
        assert up["state"] == "up" and up["last_ok"] is not None and up["in_use"] == 1

        connector.failures = [UNREACHABLE] * 40  # the database goes away
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await pool.acquire(PROFILE, None)
        down = pool.health()
        assert down["state"] == "down"
        assert down["last_error"] == "the database is unreachable"  # public text only
        assert "hunter2" not in repr(down)
        assert datetime.fromisoformat(down["last_failure"]) > datetime.fromisoformat(down["last_ok"])
        assert logs.events("upstream down", "upstream up again") == ["upstream down"]

        connector.failures = [UNREACHABLE]  # and comes back
        second = await pool.acquire(PROFILE, None)
        again = pool.health()
        assert again["state"] == "up" and again["opened"] == 2 and again["in_use"] == 2
        assert datetime.fromisoformat(again["last_ok"]) > datetime.fromisoformat(again["last_failure"])
        assert logs.events("upstream down", "upstream up again") == ["upstream down", "upstream up again"]

        pool.release(first)
        pool.release(second)
        await settle(pool)
        assert pool.health()["idle"] == 2 and pool.health()["in_use"] == 0

    asyncio.run(scenario())


def test_drop_idle_closes_idle_connections_and_those_being_reset(logs):
    async def scenario() -> None:
        clock = Clock()
        connector = Connector(clock)
        pool = make_pool(clock, connector)
        busy = await pool.acquire(PROFILE, None)  # a session still using its connection
        idle = await pooled(pool, 2)

        pool.release(busy)  # its reset is under way when the pool is dropped
        assert await pool.drop_idle() == 2
        await settle(pool)
        assert all(c.closed for c in [*idle, busy])
        assert pool.idle_count() == 0
        fresh = await pool.acquire(PROFILE, None)
        assert fresh.number == 4

    asyncio.run(scenario())


def test_a_failed_init_db_gives_the_slot_back_exactly_once():
    async def scenario() -> None:
        clock = Clock()
        pool = make_pool(clock, Connector(clock), max_size=1)
        with pytest.raises(UpstreamError):
            await pool.acquire(PROFILE, "missing")
        held = await pool.acquire(PROFILE, "hr_test")
        assert held.database == "hr_test"
        with pytest.raises(asyncio.TimeoutError):  # still only one slot
            await asyncio.wait_for(pool.acquire(PROFILE, None), 0.01)
        pool.release(held)
        assert pool.health()["in_use"] == 0

    asyncio.run(scenario())

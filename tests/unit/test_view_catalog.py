"""ViewCatalog (proxy/upstream/schema.py): what is known of each database's views, and for how
long. The fetch stands in for the side connection's query (tests/integration/test_views.py
runs it against the server)."""

from __future__ import annotations

import asyncio

from proxy.authz.analyze import analyze
from proxy.authz.model import Analysis, TableRef
from proxy.upstream.schema import ViewCatalog

PAY = "select `hr_prod`.`salary`.`amount` AS `amount` from `hr_prod`.`salary`"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Fetch:
    """information_schema as a dict: `views` rows (schema, name, definition); TABLES lists them
    and `tables`."""

    def __init__(self, views, gate: asyncio.Event | None = None, tables=()) -> None:
        self.views = views
        self.tables = [*tables, *((schema, name) for schema, name, _ in views)]
        self.queries: list[str] = []
        self.gate = gate

    async def __call__(self, sql: str):
        self.queries.append(sql)
        if self.gate is not None:
            await self.gate.wait()
        return list(self.views if "information_schema.VIEWS" in sql else self.tables)


def test_expand_asks_for_unknown_databases_then_remembers_until_the_ttl() -> None:
    clock = Clock()
    catalog = ViewCatalog(ttl_s=10, clock=clock)
    read = analyze("SELECT amount FROM hr_test.pay", None)
    assert catalog.expand(read) == frozenset({"hr_test"})
    fetch = Fetch([("hr_test", "pay", PAY), ("HR_TEST", "other", PAY)])  # the server compares names without case
    asyncio.run(catalog.load(frozenset({"hr_test"}), fetch))
    assert "WHERE TABLE_SCHEMA = 'hr_test' LIMIT 18446744073709551615" in fetch.queries[0]
    assert catalog.expand(read) == frozenset({"hr_prod"})  # what the view reads is in another database
    asyncio.run(catalog.load(frozenset({"hr_prod"}), Fetch([])))
    expanded = catalog.expand(read)
    assert isinstance(expanded, Analysis) and expanded.views == {TableRef("hr_test", "pay")}
    assert catalog.expand(read) is expanded  # the same object: the session's decision cache holds
    other = analyze("SELECT * FROM hr_test.other", None)
    assert isinstance(catalog.expand(other), Analysis) and not catalog.expand(other).views  # 'HR_TEST' ignored
    clock.t += 10
    assert catalog.expand(read) == frozenset({"hr_test"})  # read again after the TTL


def test_a_load_that_crossed_an_invalidation_is_not_kept() -> None:
    catalog = ViewCatalog(ttl_s=10, clock=Clock())

    async def crossed() -> None:
        gate = asyncio.Event()
        fetch = Fetch([], gate)  # the answer from before a CREATE VIEW
        task = asyncio.create_task(catalog.load(frozenset({"hr_test"}), fetch))
        await asyncio.sleep(0)
        catalog.invalidate()  # the CREATE VIEW ended meanwhile
        gate.set()
        await task

    asyncio.run(crossed())
    assert catalog.expand(analyze("SELECT * FROM hr_test.pay", None)) == frozenset({"hr_test"})


def test_sessions_reading_one_database_at_once_share_one_query() -> None:
    catalog = ViewCatalog(ttl_s=10, clock=Clock())

    async def together() -> Fetch:
        gate = asyncio.Event()
        fetch = Fetch([("hr_test", "pay", PAY)], gate)
        tasks = [asyncio.create_task(catalog.load(frozenset({"hr_test"}), fetch)) for _ in range(5)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return fetch

    assert len(asyncio.run(together()).queries) == 2  # TABLES and VIEWS, once


def test_a_failed_load_fails_every_waiter_and_leaves_nothing_known() -> None:
    catalog = ViewCatalog(ttl_s=10, clock=Clock())

    async def failing(sql: str):
        await asyncio.sleep(0)
        raise OSError("gone")

    async def both() -> list[object]:
        return await asyncio.gather(*(catalog.load(frozenset({"hr_test"}), failing) for _ in range(2)),
                                    return_exceptions=True)

    assert all(isinstance(r, OSError) for r in asyncio.run(both()))
    assert catalog.expand(analyze("SELECT * FROM hr_test.pay", None)) == frozenset({"hr_test"})


def test_a_name_the_database_did_not_hold_makes_it_read_again_at_most_every_second() -> None:
    clock = Clock()
    catalog = ViewCatalog(ttl_s=10, clock=clock)
    asyncio.run(catalog.load(frozenset({"hr_test"}), Fetch([], tables=[("hr_test", "people")])))
    people = analyze("SELECT * FROM hr_test.people", None)
    later = analyze("SELECT * FROM hr_test.made_elsewhere", None)
    assert isinstance(catalog.expand(people), Analysis)
    assert isinstance(catalog.expand(later), Analysis)  # just read: an unknown name is not a view yet
    clock.t += 1
    assert isinstance(catalog.expand(people), Analysis)  # known names: no new read before the TTL
    assert catalog.expand(later) == frozenset({"hr_test"})  # a view made outside the proxy since?
    asyncio.run(catalog.load(frozenset({"hr_test"}), Fetch([("hr_test", "made_elsewhere", PAY)])))
    assert catalog.expand(later) == frozenset({"hr_prod"})  # it is one: what it reads is asked for

"""The audit part of the Store contract (append_audit, search_audit, audit_chain), on every
backend: bodies come back exactly as appended, a retried batch neither fails nor duplicates,
every filter, the order, the limit, the chain in seq order, and no revision bump."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from proxy.audit.query import AUDIT_MAX_LIMIT, AuditQuery
from proxy.store.base import Store
from tests.store.conftest import run_sql

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def event(n: int, **fields: Any) -> dict[str, Any]:
    """A statement event `n` minutes after T0 (fields override)."""
    body: dict[str, Any] = {
        "type": "statement.allowed",
        "code": "JP2000",
        "schema_version": 1,
        "time": (T0 + n * MINUTE).isoformat(timespec="microseconds"),
        "event_id": f"{n:032x}",
        "proxy_instance": "host-a:100",
        "session_id": "s-1",
        "user": "dev",
        "groups": ["oncall"],
        "client_addr": "127.0.0.1:5555",
        "client_program": "mysql",
        "instance": "hr-prod",
        "environment": "prod",
        "statement": f"SELECT {n} FROM hr_prod.employee",
        "tables": ["hr_prod.employee"],
        "decision": "allow",
        "seq": n,
        "prev_hash": "",
        "hash": f"{n:064x}",
    }
    body.update(fields)
    return body


def ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["event_id"], 16) for e in events]


def search(store: Store, **query: Any) -> list[int]:
    return ids(store.search_audit(AuditQuery(**query)))


def count(url: str, table: str) -> int:
    return int(run_sql(url, f"SELECT count(*) FROM {table}")[0][0])


# -- append ---------------------------------------------------------------------------------------


def test_bodies_round_trip_exactly(store: Store) -> None:
    odd = event(
        1,
        statement="SELECT 'naïve ☃ 𝄞', \"q\" -- \\ \n\t end",
        duration_ms=1.25, rows=0, affected_rows=None, big=2**62, small=1e-07, huge=1e300, flag=True,
        nested={"b": [1, {"c": None}], "a": "x"}, empty_list=[], empty={}, params=["1", 2, 3.5, None],
        control="a\x00b\x1f",
    )
    plain = event(2)
    store.append_audit([odd, plain])
    found = store.search_audit(AuditQuery(oldest_first=True))
    assert found == [odd, plain]
    # Key order too: the stored text is the event's own JSON.
    assert [list(e) for e in found] == [list(odd), list(plain)]
    assert json.dumps(found[0]) == json.dumps(odd)


def test_an_empty_batch_is_a_noop(store: Store, store_url: str) -> None:
    store.append_audit([])
    assert count(store_url, "audit_events") == 0


def test_a_retried_batch_neither_fails_nor_duplicates(store: Store, store_url: str) -> None:
    batch = [event(1), event(2, tables=["hr_prod.employee", "hr_prod.title"])]
    store.append_audit(batch)
    store.append_audit(batch)  # the answer was lost: the emitter sends it again
    store.append_audit([event(2), event(3)])  # overlapping
    store.append_audit([event(4), event(4)])  # the same event twice in one batch
    assert search(store, oldest_first=True) == [1, 2, 3, 4]
    assert count(store_url, "audit_events") == 4
    assert count(store_url, "audit_event_tables") == 5
    assert search(store, table="hr_prod.title") == [2]


def test_audit_writes_do_not_bump_the_revision(store: Store) -> None:
    store.append_audit([event(1), event(2)])
    store.search_audit(AuditQuery())
    store.audit_chain("host-a:100")
    assert store.revision() == 0


@pytest.mark.parametrize(("broken", "message"), [
    ({"event_id": None}, "event_id"),
    ({"event_id": ""}, "event_id"),
    ({"type": None}, "no type"),
    ({"time": None}, "no time"),
    ({"time": "yesterday"}, "not ISO-8601"),
    ({"time": "2030-01-02T03:04:05"}, "not ISO-8601 with a zone"),
])
def test_a_batch_with_a_malformed_event_writes_nothing(
    store: Store, store_url: str, broken: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.append_audit([event(1), event(2, **broken), event(3)])
    assert count(store_url, "audit_events") == 0
    with pytest.raises(ValueError, match="not a mapping"):
        store.append_audit([event(1), "not an event"])  # type: ignore[list-item]
    assert count(store_url, "audit_events") == 0


def test_a_batch_is_one_transaction(store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the events were inserted (here: their tables) rolls the events back."""
    import proxy.store.postgres as postgres
    import proxy.store.sqlite as sqlite

    module = sqlite if store_url.startswith("sqlite:///") else postgres
    monkeypatch.setattr(module, "_AUDIT_TABLES_INSERT", "INSERT INTO no_such_table VALUES (1)")
    with pytest.raises(Exception):  # noqa: B017 - StoreError or psycopg's, by backend
        store.append_audit([event(1), event(2)])
    assert count(store_url, "audit_events") == 0
    monkeypatch.undo()
    store.append_audit([event(1), event(2)])
    assert search(store) == [2, 1]


def test_a_batch_of_500_and_concurrent_retries_from_two_replicas(open_stores: Callable[[], Store], store_url: str) -> None:
    a, b = open_stores(), open_stores()
    batch = [event(n, tables=[f"hr_prod.t{n % 7}"]) for n in range(1, 501)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: s.append_audit(batch), [a, b, a, b]))
    assert count(store_url, "audit_events") == 500
    assert count(store_url, "audit_event_tables") == 500
    assert search(b, limit=AUDIT_MAX_LIMIT, oldest_first=True) == list(range(1, 501))
    assert len(a.search_audit(AuditQuery(table="hr_prod.t3", limit=1000))) == len([n for n in range(1, 501) if n % 7 == 3])


def test_hostile_values_are_stored_and_the_body_kept(store: Store) -> None:
    """Indexed columns take no NUL, no lone surrogate and nothing huge; the body keeps it all."""
    long_table = "hr_prod." + "x" * 5000
    weird = event(1, user="ev\x00il", tables=[long_table, "hr_prod.employee"], instance="i" * 3000,
                  session_id="s\udc80")
    store.append_audit([weird])
    assert store.search_audit(AuditQuery()) == [weird]
    assert search(store, table="hr_prod.employee") == [1]
    assert search(store, user="ev\ufffdil") == [1]


def test_event_times_with_any_zone_are_ordered_and_filtered_as_instants(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    # Event 1 happens 30 minutes after event 2, though its local clock text reads earlier.
    first = event(1, time=(T0 + 30 * MINUTE).astimezone(plus_two).isoformat())
    second = event(2, time=T0.isoformat())
    store.append_audit([first, second])
    assert search(store) == [1, 2]
    assert search(store, since=T0 + MINUTE) == [1]
    assert store.search_audit(AuditQuery(since=T0 + MINUTE))[0]["time"] == first["time"]


# -- search ---------------------------------------------------------------------------------------


@pytest.fixture
def trail(store: Store) -> Store:
    """A small mixed trail (event n at T0 + n minutes)."""
    store.append_audit([
        event(1, type="session.start", tables=None, decision=None, statement=None),
        event(2),
        event(3, type="statement.denied", decision="deny", tables=["hr_prod.salary"], reason_code="missing_grant"),
        event(4, type="statement.completed", rows=3),
        event(5, user="eve", session_id="s-2", instance="hr-test", environment="test",
              tables=["hr_test.employee"], proxy_instance="host-b:200", seq=1),
        event(6, type="request.created", session_id=None, db="hr_prod", tables=["salary", "title"],
              decision=None, request_id="r-1"),
        event(7, type="grant.added", session_id=None, object="hr_prod.salary", tables=None, decision=None,
              user="ada", actor="ada"),
        event(8, type="statement.denied", decision="deny", user="eve", session_id="s-2", instance="hr-test",
              tables=["hr_prod.salary", "hr_prod.employee"], proxy_instance="host-b:200", seq=2),
    ])
    return store


def test_newest_first_oldest_first_and_limit(trail: Store) -> None:
    assert search(trail) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert search(trail, oldest_first=True) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert search(trail, limit=3) == [8, 7, 6]
    assert search(trail, limit=3, oldest_first=True) == [1, 2, 3]


def test_equal_times_keep_the_order_they_were_appended(store: Store) -> None:
    same = T0.isoformat()
    store.append_audit([event(3, time=same), event(1, time=same)])
    store.append_audit([event(2, time=same)])
    assert search(store, oldest_first=True) == [3, 1, 2]
    assert search(store) == [2, 1, 3]
    assert search(store, table="hr_prod.employee") == [2, 1, 3]


@pytest.mark.parametrize(("query", "expected"), [
    ({"user": "eve"}, [8, 5]),
    ({"user": "nobody"}, []),
    ({"since": T0 + 6 * MINUTE}, [8, 7, 6]),  # since is inclusive
    ({"until": T0 + 3 * MINUTE}, [2, 1]),  # until is exclusive
    ({"since": T0 + 2 * MINUTE, "until": T0 + 4 * MINUTE}, [3, 2]),
    ({"table": "hr_prod.salary"}, [8, 7, 6, 3]),  # statements, a request (db + names), a grant
    ({"table": "hr_prod.title"}, [6]),
    ({"table": "hr_prod.employee"}, [8, 4, 2]),
    ({"table": "hr_prod.salary", "since": T0 + 4 * MINUTE, "until": T0 + 8 * MINUTE}, [7, 6]),
    ({"table": "hr_prod.salary", "user": "eve"}, [8]),
    ({"decision": "deny"}, [8, 3]),
    ({"decision": "allow"}, [5, 4, 2]),
    ({"type": "statement.denied"}, [8, 3]),
    ({"type": "statement."}, [8, 5, 4, 3, 2]),
    ({"type": "statement.*"}, [8, 5, 4, 3, 2]),
    ({"type": "statement"}, []),  # exact: no event has the bare type
    ({"type": "request."}, [6]),
    ({"instance": "hr-test"}, [8, 5]),
    ({"session_id": "s-2"}, [8, 5]),
    ({"proxy_instance": "host-b:200"}, [8, 5]),
    ({"user": "eve", "decision": "deny", "table": "hr_prod.salary", "type": "statement.", "instance": "hr-test",
      "session_id": "s-2", "proxy_instance": "host-b:200", "since": T0, "until": T0 + 9 * MINUTE}, [8]),
    ({"table": "hr_prod.salary", "oldest_first": True, "limit": 2}, [3, 6]),
])
def test_filters(trail: Store, query: dict[str, Any], expected: list[int]) -> None:
    assert search(trail, **query) == expected


@pytest.mark.parametrize(("query", "message"), [
    ({"limit": 0}, "limit"),
    ({"limit": AUDIT_MAX_LIMIT + 1}, "limit"),
    ({"limit": True}, "limit"),
    ({"since": datetime(2030, 1, 1)}, "timezone-aware"),
    ({"until": datetime(2030, 1, 1)}, "timezone-aware"),
    ({"decision": "maybe"}, "decision"),
    ({"type": "*"}, "type"),
])
def test_a_query_out_of_bounds_is_refused(query: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuditQuery(**query)


def test_search_takes_an_audit_query(store: Store) -> None:
    with pytest.raises(TypeError, match="AuditQuery"):
        store.search_audit({"user": "dev"})  # type: ignore[arg-type]


# -- chain ----------------------------------------------------------------------------------------


def test_the_chain_is_in_seq_order_and_pages(store: Store) -> None:
    # Appended out of order, with another proxy's events between; times do not decide the order.
    store.append_audit([event(n, seq=n, time=(T0 - n * MINUTE).isoformat()) for n in (3, 1)])
    store.append_audit([event(10, proxy_instance="host-b:200", seq=1)])
    store.append_audit([event(n, seq=n) for n in (2, 5, 4)])
    assert [e["seq"] for e in store.audit_chain("host-a:100")] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in store.audit_chain("host-a:100", after_seq=2)] == [3, 4, 5]
    assert [e["seq"] for e in store.audit_chain("host-a:100", after_seq=1, limit=2)] == [2, 3]
    assert store.audit_chain("host-b:200") == [event(10, proxy_instance="host-b:200", seq=1)]
    assert store.audit_chain("host-c:1") == []
    assert store.audit_chain("host-a:100", limit=1) == [event(1, seq=1, time=(T0 - MINUTE).isoformat())]


@pytest.mark.parametrize(("args", "message"), [
    (("",), "proxy_instance"),
    (("host-a:100", -1), "after_seq"),
    (("host-a:100", 0, 0), "limit"),
    (("host-a:100", 0, AUDIT_MAX_LIMIT + 1), "limit"),
])
def test_chain_arguments_out_of_bounds_are_refused(store: Store, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.audit_chain(*args)


def test_the_emitters_events_verify_from_the_store(store: Store) -> None:
    """Sealed events stored and read back by seq still verify: the body is what was hashed."""
    from proxy.audit.chain import seal, verify

    events, last = [], ""
    for n in range(1, 6):
        e = {k: v for k, v in event(n, statement=f"SELECT 'ünï {n}'", duration_ms=n / 3).items()
             if k not in ("seq", "prev_hash", "hash")}
        seal(e, n, last)
        last = e["hash"]
        events.append(e)
    store.append_audit(events[3:])
    store.append_audit(events[:3])
    chain = store.audit_chain("host-a:100")
    assert chain == events
    report = verify(chain)
    assert report.ok, report.problems
    chain[2]["rows"] = 99  # what an edit in the store would look like
    assert [p.kind for p in verify(chain).problems] == ["edited"]


def test_a_version_2_store_upgrades_and_keeps_its_grants(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.store.migrations as migrations
    from proxy.store.base import StoredGrant
    from tests.store.conftest import unmigrated_store

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        patch.setattr(migrations, "LATEST_VERSION", 2)
        old = unmigrated_store(store_url)
        try:
            old.migrate()
        finally:
            old.close()
    # The row as version-2 code wrote it (today's code writes columns version 2 did not have).
    privileges = "'[\"SELECT\"]'" if store_url.startswith("sqlite:///") else "ARRAY['SELECT']::text[]"
    run_sql(store_url, f"""INSERT INTO grants (id, subject, db, table_name, privileges, expires_at, created_at,
            created_by, reason, instance)
        VALUES ('g-00000000000b', 'user:dev', 'hr_prod', 'salary', {privileges}, '{(T0 + MINUTE).isoformat()}',
            '{T0.isoformat()}', 'ada', '', '*')""")
    grant = StoredGrant("g-00000000000b", "user:dev", "hr_prod", "salary", ("SELECT",), T0 + MINUTE, T0, "ada")
    new = unmigrated_store(store_url)
    try:
        new.migrate()
        assert run_sql(store_url, "SELECT max(version) FROM schema_migrations") == [(migrations.LATEST_VERSION,)]
        assert new.get_grant(grant.id) == grant and new.revision() == 0
        new.append_audit([event(1)])
        assert search(new) == [1] and new.revision() == 0  # audit writes change no grant
    finally:
        new.close()

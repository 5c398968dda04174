"""GET /v1/audit and /v1/audit/chain through the real FastAPI app (httpx's ASGI transport) on a
SQLite store filled by the real emitter and store sink: who may read (admins, auditors; others
403, no token 401), every filter, 400 for a wrong parameter, 503 when the store fails, 404 when
the proxy keeps no store trail, and the chain in seq order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from proxy.api.app import create_app
from proxy.api.audit_middleware import AuditMiddleware
from proxy.audit.chain import verify
from proxy.audit.events import AuditEmitter, EventType, MemorySink, SessionInfo
from proxy.audit.search import SearchError, build_query, parse_since
from proxy.audit.store_sink import StoreSink
from proxy.authz.model import Principal
from proxy.identity.personal_tokens import TokenError
from proxy.store import open_store
from proxy.audit.query import AuditQuery
from proxy.store.base import Store
from proxy.workflow.approvals import ApprovalPolicies
from proxy.workflow.service import AccessService

NOW = datetime.now(UTC).replace(microsecond=0)
ADMIN, AUDITOR, DEV, NOBODY = "ada:dba", "ines:security,devs", "dev:devs", None


class Verifier:
    """Tokens are "user" or "user:group1,group2"; "bad" is refused."""

    async def verify_async(self, _: object, token: str) -> Principal:
        if token == "bad":
            raise TokenError("bad_signature")
        user, _, groups = token.partition(":")
        return Principal(user, tuple(g for g in groups.split(",") if g))


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def __call__(self) -> datetime:
        return self.at


def _fill(store: Store) -> None:
    """A small trail: event i (1..8) at NOW - (9 - i) hours, from proxy process p:1; two from p:2."""
    clock = Clock()
    audit = AuditEmitter([StoreSink(store)], instance="p:1", clock=clock)
    dev = SessionInfo("s-1", "10.0.0.1:5000", "dev", ("devs",), "mysql", instance="hr-prod", environment="prod")
    eve = SessionInfo("s-2", "10.0.0.2:5000", "eve", (), "dbeaver", instance="hr-test", environment="test")

    def at(i: int) -> None:
        clock.at = NOW - timedelta(hours=9 - i)

    at(1)
    audit.emit(EventType.SESSION_START, dev)
    at(2)
    audit.emit(EventType.STATEMENT_ALLOWED, dev, statement="SELECT * FROM employee", tables=["hr_prod.employee"],
               decision="allow")
    at(3)
    audit.emit(EventType.STATEMENT_DENIED, dev, statement="SELECT * FROM salary", tables=["hr_prod.salary"],
               decision="deny", reason_code="missing_grant")
    at(4)
    audit.emit(EventType.STATEMENT_COMPLETED, dev, statement_id="s-1.1", tables=["hr_prod.employee"],
               decision="allow", rows=3)
    at(5)
    audit.emit(EventType.REQUEST_CREATED, None, user="dev", actor="dev", id="r-1", db="hr_prod",
               tables=["salary"], privileges=["SELECT"], instance="hr-prod", environment="prod")
    at(6)
    audit.emit(EventType.GRANT_ADDED, None, user="ada", actor="ada", grant_id="g-1", subject="user:dev",
               object="hr_prod.salary", instance="hr-prod")
    at(7)
    audit.emit(EventType.STATEMENT_ALLOWED, dev, statement="SELECT * FROM salary", tables=["hr_prod.salary"],
               decision="allow")
    at(8)
    audit.emit(EventType.STATEMENT_DENIED, eve, statement="DELETE FROM employee", tables=["hr_test.employee"],
               decision="deny", reason_code="missing_grant")
    audit.close()
    other = AuditEmitter([StoreSink(store)], instance="p:2", clock=clock)
    at(8)
    other.emit(EventType.SESSION_START, eve)
    other.emit(EventType.SESSION_END, eve)
    other.close()


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    _fill(store)
    yield store
    store.close()


def _service(store: Store) -> AccessService:
    audit = AuditEmitter([MemorySink()], instance="api")
    return AccessService(store, lambda: ApprovalPolicies(()), audit, lambda: datetime.now(UTC),
                         admin_groups=frozenset({"dba"}))


class Api:
    def __init__(self, app: Any) -> None:
        self.app = app

    def get(self, path: str, token: str | None, **params: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://api",
                                         headers=headers) as client:
                return await client.get(path, params=params)

        return asyncio.run(call())

    def events(self, token: str | None = ADMIN, **params: Any) -> list[dict[str, Any]]:
        response = self.get("/v1/audit", token, **params)
        assert response.status_code == 200, response.text
        return response.json()["events"]

    def hours(self, **params: Any) -> list[int]:
        """The events found, as their hour index i (event i is at NOW - (9 - i) h)."""
        found = self.events(**params)
        return [9 - round((NOW - datetime.fromisoformat(e["time"])).total_seconds() / 3600) for e in found]


@pytest.fixture
def api(store: Store) -> Api:
    return Api(create_app(_service(store), Verifier(), audit_store=store,  # type: ignore[arg-type]
                          auditor_groups=frozenset({"security"})))


# -- who may read ---------------------------------------------------------------------------------


def test_admins_and_auditors_read_others_are_refused(api: Api) -> None:
    assert len(api.events(ADMIN)) == 12  # and each emitter's seal
    assert len(api.events(AUDITOR)) == 12
    refused = api.get("/v1/audit", DEV)
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "reading the audit trail is for admins and auditors (auditor groups: security); dev is neither")
    assert api.get("/v1/audit/chain", DEV, proxy_instance="p:1").status_code == 403
    for path in ("/v1/audit", "/v1/audit/chain"):
        assert api.get(path, NOBODY, proxy_instance="p:1").status_code == 401
        assert api.get(path, "bad", proxy_instance="p:1").status_code == 401


def test_without_auditor_groups_only_admins_read(store: Store) -> None:
    api = Api(create_app(_service(store), Verifier(), audit_store=store))  # type: ignore[arg-type]
    assert api.get("/v1/audit", ADMIN).status_code == 200
    refused = api.get("/v1/audit", AUDITOR)
    assert refused.status_code == 403 and "none configured" in refused.json()["detail"]


def test_a_proxy_without_a_store_trail_says_so(store: Store) -> None:
    api = Api(create_app(_service(store), Verifier()))  # type: ignore[arg-type]
    missing = api.get("/v1/audit", ADMIN)
    assert missing.status_code == 404 and "does not store its audit trail" in missing.json()["detail"]
    assert api.get("/v1/audit/chain", ADMIN, proxy_instance="p:1").status_code == 404
    assert api.get("/v1/audit", DEV).status_code == 403  # no hint for those who may not read it


def test_a_failing_store_is_503(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'gone.db'}")
    api = Api(create_app(_service(store), Verifier(), audit_store=store))  # type: ignore[arg-type]
    store.close()
    for path in ("/v1/audit", "/v1/audit/chain"):
        failed = api.get(path, ADMIN, proxy_instance="p:1")
        assert failed.status_code == 503 and failed.json()["detail"] == "the state store is unavailable; try again"


# -- search ---------------------------------------------------------------------------------------


def test_events_come_back_exactly_as_written_newest_first(api: Api, store: Store) -> None:
    found = api.events()
    assert found == store.search_audit(AuditQuery())
    assert [e["time"] for e in found] == sorted((e["time"] for e in found), reverse=True)
    assert api.hours(oldest_first="true", proxy_instance="p:1") == [1, 2, 3, 4, 5, 6, 7, 8, 8]  # 8: and the seal


@pytest.mark.parametrize(("params", "expected"), [
    ({"user": "dev"}, [7, 5, 4, 3, 2, 1]),
    ({"user": "eve", "proxy_instance": "p:1"}, [8]),
    ({"table": "hr_prod.salary"}, [7, 6, 5, 3]),  # statements, the request (db + table), the grant
    ({"table": "`hr_prod`.`salary`"}, [7, 6, 5, 3]),
    ({"table": "hr_prod.employee"}, [4, 2]),
    ({"decision": "deny"}, [8, 3]),
    ({"decision": "DENY", "table": "hr_prod.salary", "user": "dev"}, [3]),
    ({"type": "statement.denied"}, [8, 3]),
    ({"type": "statement.", "user": "dev"}, [7, 4, 3, 2]),
    ({"type": "statement.*", "user": "dev"}, [7, 4, 3, 2]),
    ({"type": "statement", "user": "dev"}, [7, 4, 3, 2]),  # a bare category
    ({"type": "grant."}, [6]),
    ({"instance": "hr-test", "proxy_instance": "p:1"}, [8]),
    ({"session_id": "s-1"}, [7, 4, 3, 2, 1]),
    ({"proxy_instance": "p:2"}, [8, 8, 8]),  # start, end, seal
    ({"since": "3h30m", "proxy_instance": "p:1"}, [8, 8, 7, 6]),  # the seal, at 8 too
    ({"since": (NOW - timedelta(hours=4)).isoformat(), "proxy_instance": "p:1"}, [8, 8, 7, 6, 5]),  # inclusive
    ({"type": "audit.sealed"}, [8, 8]),
    ({"until": (NOW - timedelta(hours=6)).isoformat()}, [2, 1]),  # exclusive
    ({"since": "8h", "until": "5h", "user": "dev"}, [4, 3, 2]),
    ({"limit": 2, "user": "dev"}, [7, 5]),
    ({"limit": 2, "user": "dev", "oldest_first": "true"}, [1, 2]),
])
def test_filters(api: Api, params: dict[str, Any], expected: list[int]) -> None:
    assert api.hours(**params) == expected


def test_a_naive_time_is_utc(api: Api) -> None:
    naive = (NOW - timedelta(hours=2)).replace(tzinfo=None).isoformat()
    assert api.hours(since=naive, proxy_instance="p:1") == [8, 8, 7]


@pytest.mark.parametrize(("params", "message"), [
    ({"table": "salary"}, "table: 'salary' is not db.table"),
    ({"table": "a.b.c"}, "is not db.table"),
    ({"decision": "maybe"}, "decision: 'maybe' is not one of allow, deny"),
    ({"since": "yesterday"}, "since: 'yesterday' is neither a span"),
    ({"until": "5 hours"}, "until: '5 hours' is neither a span"),
    ({"since": "1h", "until": "2h"}, "must be before until"),
    ({"type": "statement denied"}, "type: 'statement denied' is not an event type"),
    ({"user": "x" * 300}, "user: at most 256 characters"),
    ({"limit": 0}, "query.limit"),
    ({"limit": 10_001}, "query.limit"),
    ({"limit": "many"}, "query.limit"),
    ({"oldest_first": "perhaps"}, "query.oldest_first"),
])
def test_a_wrong_parameter_is_400_with_what_is_wrong(api: Api, params: dict[str, Any], message: str) -> None:
    response = api.get("/v1/audit", ADMIN, **params)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_other_endpoints_keep_fastapis_422(api: Api) -> None:
    assert api.get("/v1/requests", DEV, status="nonsense").status_code == 422


# -- chain ----------------------------------------------------------------------------------------


def test_the_chain_in_seq_order_pages_and_verifies(api: Api) -> None:
    response = api.get("/v1/audit/chain", AUDITOR, proxy_instance="p:1")
    assert response.status_code == 200
    chain = response.json()["events"]
    assert [e["seq"] for e in chain] == list(range(1, 10))  # 8 and the seal
    assert verify(chain).intact
    page = api.get("/v1/audit/chain", ADMIN, proxy_instance="p:1", after_seq=3, limit=2).json()["events"]
    assert [e["seq"] for e in page] == [4, 5]
    assert api.get("/v1/audit/chain", ADMIN, proxy_instance="nowhere:1").json() == {"events": []}


@pytest.mark.parametrize(("params", "message"), [
    ({}, "query.proxy_instance"),
    ({"proxy_instance": ""}, "proxy_instance is required"),
    ({"proxy_instance": "p:1", "after_seq": -1}, "query.after_seq"),
    ({"proxy_instance": "p:1", "limit": 0}, "query.limit"),
])
def test_wrong_chain_parameters_are_400(api: Api, params: dict[str, Any], message: str) -> None:
    response = api.get("/v1/audit/chain", ADMIN, **params)
    assert response.status_code == 400 and message in response.json()["detail"]


# -- the API around it ----------------------------------------------------------------------------


def test_openapi_documents_both_endpoints(api: Api) -> None:
    spec = api.get("/openapi.json", None).json()
    search = spec["paths"]["/v1/audit"]["get"]
    assert {p["name"] for p in search["parameters"]} == {
        "user", "since", "until", "table", "decision", "type", "instance", "session_id", "proxy_instance",
        "limit", "oldest_first",
    }
    assert "admins and auditors" in search["summary"]
    chain = spec["paths"]["/v1/audit/chain"]["get"]
    assert {p["name"] for p in chain["parameters"]} == {"proxy_instance", "after_seq", "limit"}


def test_reading_the_trail_is_itself_audited_with_the_reader(store: Store) -> None:
    memory = MemorySink()
    audit = AuditEmitter([memory], instance="api")
    app = create_app(_service(store), Verifier(), audit_store=store,  # type: ignore[arg-type]
                     auditor_groups=frozenset({"security"}))
    Api(AuditMiddleware(app, audit)).get("/v1/audit", AUDITOR, user="dev", table="hr_prod.salary")
    (call,) = [e for e in memory.events if e["type"] == "admin.api_call"]
    assert (call["user"], call["path"], call["status"]) == ("ines", "/v1/audit", 200)
    assert "salary" not in str(call)  # the query string's values are not recorded


def test_parse_since_forms() -> None:
    now = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("1h", now) == now - timedelta(hours=1)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("1w", now) == now - timedelta(weeks=1)
    assert parse_since("45s", now) == now - timedelta(seconds=45)
    assert parse_since("now", now) == now
    assert parse_since("2030-01-01T08:00:00Z", now) == datetime(2030, 1, 1, 8, tzinfo=UTC)
    assert parse_since("2030-01-01", now) == datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="before year 1"):
        parse_since("99999999999999d", now)


def test_search_times_are_read_by_the_one_time_parser() -> None:
    """proxy.timespec.parse_past, like every other time a command takes: a clock time is the
    last one, a bare number is refused with the unit hint --for gives."""
    now = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("14:00", now) == datetime(2030, 1, 1, 14, 0, tzinfo=UTC)
    assert build_query(now=now, since="08:30", until="11:00").since == datetime(2030, 1, 2, 8, 30, tzinfo=UTC)
    with pytest.raises(SearchError, match="'90' has no unit: add one, e.g. 90m for minutes"):
        parse_since("90", now)

"""Upstream instances in the workflow: which instance a request or direct grant is for, the
environment (and so the approval policy) it gets from its database on its instance
(proxy.environments), and the grants approval creates applying on that instance only. Also the
admin API and the CLI carrying `instance`."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx
import pytest

from jitproxy_demo.inprocess import MutableClock
from proxy import cli_api
from proxy.api.app import create_app
from proxy.audit.events import AuditEmitter, MemorySink
from proxy.authz.model import Principal
from proxy.store import open_store
from proxy.store.base import RequestStatus
from proxy.environments import Environments, InstanceEnvironments
from proxy.workflow.approvals import ApprovalPolicies, rules_from_document
from proxy.workflow.service import AccessService, Forbidden, Invalid, grant_fields, request_fields
from tests.helpers import HR_ENVIRONMENTS, environments

DOC = {
    "approval_policies": [
        {"environment": "prod", "privileges": ["SELECT"], "approvers": ["group:owner"], "max_duration": "8h"},
        {"environment": "test", "privileges": ["SELECT"], "auto_approve": True, "max_duration": "1d"},
    ],
}
TWO = {"hr-prod": "prod", "hr-test": "test"}
DEV, OWNER, OTHER, ADMIN = Principal("dev"), Principal("olga", ("owner",)), Principal("eve"), Principal("ada", ("dba",))
HOUR = timedelta(hours=1)


class Harness:
    def __init__(self, tmp_path, instances: Mapping[str, str | None | InstanceEnvironments]) -> None:
        """`instances`: named instances (`upstreams:`), each its environment or its environments;
        none: one `upstream:` whose databases are hr_prod (prod) and hr_test (test)."""
        rules = rules_from_document(DOC, "a.yaml")
        self.sink = MemorySink()
        self.notes: list[tuple[str, dict[str, Any]]] = []
        self.store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
        envs = Environments({name: env if isinstance(env, InstanceEnvironments) else InstanceEnvironments(env)
                             for name, env in instances.items()}) if instances else environments(HR_ENVIRONMENTS)
        self.service = AccessService(
            self.store, lambda: ApprovalPolicies(tuple(rules)), AuditEmitter([self.sink], instance="test"),
            MutableClock(), admin_groups=frozenset({"dba"}),
            notify=lambda event, body: self.notes.append((event, body)), instances=list(instances),
            environments=envs,
        )

    def request(self, db: str = "hr_prod", instance: str | None = None, who: Principal = DEV):
        return self.service.create_request(who, db, ["salary"], ["SELECT"], "INC-1 check", duration=HOUR,
                                           instance=instance)

    def grant(self, instance: str | None = None, objects: tuple[str, ...] = ("hr_prod.salary",)):
        return self.service.add_grants(ADMIN, "user:dev", list(objects), ["SELECT"], "pairing", duration=HOUR,
                                       instance=instance)


@pytest.fixture
def make(tmp_path):
    made: list[Harness] = []

    def build(instances: Mapping[str, str | None | InstanceEnvironments]) -> Harness:
        made.append(Harness(tmp_path / str(len(made)), instances))
        return made[-1]

    for i in range(4):
        (tmp_path / str(i)).mkdir()
    yield build
    for harness in made:
        harness.store.close()


# -- which instance -----------------------------------------------------------------------------


def test_without_configured_instances_everything_is_for_every_instance(make):
    h = make({})
    assert h.request().instance == "*"
    assert h.request(instance="*").instance == "*"
    assert [g.instance for g in h.grant()] == ["*"]
    with pytest.raises(Invalid, match="names no upstream instances"):
        h.request(instance="hr-prod")
    with pytest.raises(Invalid, match="names no upstream instances"):
        h.grant(instance="hr-prod")


def test_several_instances_and_none_named_is_refused_and_writes_nothing(make):
    h = make(TWO)
    with pytest.raises(Invalid) as e:
        h.request()
    assert e.value.message == "name the instance: --instance <one of hr-prod, hr-test>"
    with pytest.raises(Invalid, match=r"name the instance: --instance <one of hr-prod, hr-test>"):
        h.grant()
    assert h.store.requests() == [] and h.store.grants() == []
    assert h.store.revision() == 0


@pytest.mark.parametrize("name", ["hr-dev", "*", "HR-PROD", "hr-prod "])
def test_an_unknown_instance_is_refused_naming_the_known_ones(make, name):
    h = make(TWO)
    with pytest.raises(Invalid, match=r"unknown instance .*one of hr-prod, hr-test"):
        h.request(instance=name)
    with pytest.raises(Invalid, match=r"unknown instance .*one of hr-prod, hr-test"):
        h.grant(instance=name)
    assert h.store.revision() == 0


def test_the_only_instance_is_implied(make):
    h = make({"hr-prod": "prod"})
    assert h.request().instance == "hr-prod"
    assert [g.instance for g in h.grant()] == ["hr-prod"]
    with pytest.raises(Invalid, match="one of hr-prod>"):
        h.request(instance="hr-test")


def test_a_named_instance_is_kept_on_requests_and_direct_grants(make):
    h = make(TWO)
    r = h.request(instance="hr-prod")
    assert r.instance == "hr-prod" and h.store.get_request(r.id).instance == "hr-prod"
    grants = h.grant(instance="hr-test", objects=("hr_prod.salary", "hr_prod.title"))
    assert [g.instance for g in grants] == ["hr-test", "hr-test"]
    assert [g.instance for g in h.service.list_grants(DEV)] == ["hr-test", "hr-test"]


def test_a_bad_object_among_several_grants_none(make):
    h = make(TWO)
    with pytest.raises(Invalid):
        h.grant(instance="hr-prod", objects=("hr_prod.salary", "*.*"))
    assert h.store.grants() == []


# -- environment ---------------------------------------------------------------------------------


def test_a_database_is_in_its_instances_environment(make):
    h = make(TWO)
    # hr_prod is called "prod", but on the test instance it is test data: auto-approved.
    on_test = h.request(db="hr_prod", instance="hr-test")
    assert (on_test.environment, on_test.status) == ("test", RequestStatus.APPROVED)
    # hr_test is called "test", but on the prod instance it needs an owner.
    on_prod = h.request(db="hr_test", instance="hr-prod")
    assert (on_prod.environment, on_prod.status) == ("prod", RequestStatus.PENDING)
    with pytest.raises(Exception, match="not an approver for prod"):
        h.service.approve(OTHER, on_prod.id)
    assert h.service.approve(OWNER, on_prod.id).status is RequestStatus.APPROVED


def test_a_database_listed_in_its_instances_environments_is_in_that_one(make):
    h = make({"hr-prod": InstanceEnvironments("prod", {"hr_test": "test"})})
    assert h.request(db="hr_prod").environment == "prod"
    on_test = h.request(db="hr_test")
    assert (on_test.environment, on_test.status) == ("test", RequestStatus.APPROVED)


def test_an_instance_without_environment_has_its_databases_environments_only(make):
    h = make({"hr-a": InstanceEnvironments(None, HR_ENVIRONMENTS), "hr-b": InstanceEnvironments(None, HR_ENVIRONMENTS)})
    with pytest.raises(Forbidden, match="billing on hr-a is in no environment"):
        h.request(db="billing", instance="hr-a")  # never some environment by default
    assert h.request(db="hr_prod", instance="hr-a").environment == "prod"
    auto = h.request(db="hr_test", instance="hr-b")
    assert (auto.environment, auto.status) == ("test", RequestStatus.APPROVED)
    assert auto.instance == "hr-b"
    assert [h.store.get_grant(g).instance for g in auto.grant_ids] == ["hr-b"]


def test_an_instance_environment_with_no_policy_cannot_be_requested(make):
    h = make({"hr-stage": "staging"})
    with pytest.raises(Exception, match="in environment staging"):
        h.request(db="hr_test")


# -- approval carries the instance ----------------------------------------------------------------


def test_approving_creates_grants_on_the_requests_instance(make):
    h = make(TWO)
    r = h.service.create_request(DEV, "hr_prod", ["salary", "title"], ["SELECT"], "INC-7 payroll",
                                 duration=HOUR, instance="hr-prod")
    done = h.service.approve(OWNER, r.id, "ok")
    assert done.status is RequestStatus.APPROVED and done.instance == "hr-prod"
    grants = [h.store.get_grant(g) for g in done.grant_ids]
    assert [(g.table, g.instance, g.request_id) for g in grants] == [
        ("salary", "hr-prod", r.id), ("title", "hr-prod", r.id),
    ]


def test_auto_approval_creates_grants_on_the_requests_instance(make):
    h = make(TWO)
    r = h.request(instance="hr-test")
    assert [h.store.get_grant(g).instance for g in r.grant_ids] == ["hr-test"]


def test_fields_audit_events_and_notifications_name_the_instance(make):
    h = make(TWO)
    r = h.request(instance="hr-prod")
    h.service.approve(OWNER, r.id)
    (grant,) = h.grant(instance="hr-test")
    assert request_fields(h.store.get_request(r.id))["instance"] == "hr-prod"
    assert grant_fields(grant)["instance"] == "hr-test"
    by_type = {e["type"]: e for e in h.sink.events}
    assert by_type["request.created"]["instance"] == "hr-prod"
    assert by_type["request.approved"]["instance"] == "hr-prod"
    assert by_type["grant.added"]["instance"] == "hr-test"
    assert [(event, body["instance"]) for event, body in h.notes] == [
        ("request.created", "hr-prod"), ("request.approved", "hr-prod"),
    ]


# -- the admin API ---------------------------------------------------------------------------------


class _Verifier:
    """Tokens are "user" or "user:group1,group2" (the API's own token checks are tested elsewhere)."""

    async def verify_async(self, _: object, token: str) -> Principal:
        user, _, groups = token.partition(":")
        return Principal(user, tuple(g for g in groups.split(",") if g))


class _Client:
    """Calls the app in-process (httpx's ASGI transport), as `token`."""

    def __init__(self, service: AccessService, token: str) -> None:
        self.app = create_app(service, _Verifier())  # type: ignore[arg-type]
        self.token = token

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://api",
                                         headers={"Authorization": f"Bearer {self.token}"}) as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._call("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._call("DELETE", path, **kwargs)


def _client(service: AccessService, token: str) -> _Client:
    return _Client(service, token)


def test_the_api_takes_and_returns_the_instance(make):
    h = make(TWO)
    dev, admin = _client(h.service, "dev"), _client(h.service, "ada:dba")
    body = {"db": "hr_prod", "tables": ["salary"], "reason": "INC-1 check", "duration": "1h"}
    refused = dev.post("/v1/requests", json=body)
    assert refused.status_code == 400
    assert refused.json()["detail"] == "name the instance: --instance <one of hr-prod, hr-test>"
    created = dev.post("/v1/requests", json={**body, "instance": "hr-test"})
    assert created.status_code == 201, created.text
    assert (created.json()["instance"], created.json()["status"]) == ("hr-test", "approved")
    assert [r["instance"] for r in dev.get("/v1/requests", params={"mine": "true"}).json()] == ["hr-test"]
    assert dev.get(f"/v1/requests/{created.json()['id']}").json()["instance"] == "hr-test"

    grant = {"subject": "user:dev", "objects": ["hr_prod.title"], "duration": "1h", "reason": "pairing"}
    assert admin.post("/v1/grants", json={**grant, "instance": "hr-dev"}).status_code == 400
    added = admin.post("/v1/grants", json={**grant, "instance": "hr-prod"})
    assert added.status_code == 201, added.text
    assert [g["instance"] for g in added.json()] == ["hr-prod"]
    assert sorted(g["instance"] for g in admin.get("/v1/grants", params={"all": "true"}).json()) == [
        "hr-prod", "hr-test",
    ]
    assert admin.delete(f"/v1/grants/{added.json()[0]['grant_id']}").json()["instance"] == "hr-prod"


def test_the_api_without_instance_in_a_one_instance_proxy(make):
    h = make({"default": InstanceEnvironments(None, HR_ENVIRONMENTS)})
    created = _client(h.service, "dev").post(
        "/v1/requests", json={"db": "hr_test", "tables": ["salary"], "reason": "INC-1 check", "duration": "1h"})
    assert created.status_code == 201 and created.json()["instance"] == "default"


# -- the CLI ---------------------------------------------------------------------------------------


def _run_cli(monkeypatch, capsys, answer: Any, *argv: str) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def fake_call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
        calls.append((method, path, kwargs))
        return answer

    monkeypatch.setattr(cli_api, "_call", fake_call)
    parser = argparse.ArgumentParser()
    cli_api.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    assert args.func(args) == 0
    return capsys.readouterr().out, calls


def _request(instance: str | None = "*", **changes: Any) -> dict[str, Any]:
    r = {"id": "r-0123456789ab", "status": "pending", "requester": "dev", "environment": "prod",
         "db": "hr_prod", "tables": ["salary"], "privileges": ["SELECT"], "duration_s": 3600,
         "reason": "INC-1 check", "access_until": None, "approvals": [], "grant_ids": []}
    if instance is not None:
        r["instance"] = instance
    return {**r, **changes}


def _grant(instance: str | None = "*", **changes: Any) -> dict[str, Any]:
    g = {"grant_id": "g-0123456789ab", "subject": "user:dev", "object": "hr_prod.salary",
         "privileges": ["SELECT"], "expires_at": "2030-01-01T00:00:00+00:00", "created_by": "ada",
         "request_id": None}
    if instance is not None:
        g["instance"] = instance
    return {**g, **changes}


def test_cli_sends_instance_only_when_given(monkeypatch, capsys):
    base = ("request", "create", "--db", "hr_prod", "--table", "salary", "--for", "1h", "--reason", "INC-1")
    out, calls = _run_cli(monkeypatch, capsys, _request(), *base)
    assert "instance" not in calls[0][2]["json"]
    assert out.startswith("request r-0123456789ab: pending")
    out, calls = _run_cli(monkeypatch, capsys, _request("hr-prod"), *base, "--instance", "hr-prod")
    assert calls[0][2]["json"]["instance"] == "hr-prod"
    assert out.startswith("request r-0123456789ab on hr-prod: pending")

    grant = ("grant", "add", "--user", "dev", "--grant", "hr_prod.salary", "--for", "1h")
    _, calls = _run_cli(monkeypatch, capsys, [_grant()], *grant)
    assert "instance" not in calls[0][2]["json"]
    out, calls = _run_cli(monkeypatch, capsys, [_grant("hr-test")], *grant, "--instance", "hr-test")
    assert calls[0][2]["json"]["instance"] == "hr-test"
    assert "user:dev                 hr-test hr_prod.salary" in out


def test_cli_tables_show_the_instance_column_only_when_some_row_has_one(monkeypatch, capsys):
    # Every row for every instance (or a server without instances): the table looks as before.
    plain, _ = _run_cli(monkeypatch, capsys, [_request(), _request(None)], "request", "list")
    assert " * " not in plain and "dev              prod   hr_prod.{salary}" in plain
    mixed, _ = _run_cli(monkeypatch, capsys, [_request("hr-prod"), _request()], "request", "list")
    first, second = mixed.splitlines()
    assert "dev              hr-prod prod   hr_prod.{salary}" in first
    assert "dev              *       prod   hr_prod.{salary}" in second  # aligned

    plain, _ = _run_cli(monkeypatch, capsys, [_grant(), _grant(None)], "grant", "list")
    assert "user:dev                 hr_prod.salary" in plain
    mixed, _ = _run_cli(monkeypatch, capsys, [_grant("hr-test"), _grant()], "grant", "list")
    assert [line.split()[2] for line in mixed.splitlines()] == ["hr-test", "*"]
    out, _ = _run_cli(monkeypatch, capsys, _grant("hr-test"), "grant", "revoke", "g-0123456789ab")
    assert out.startswith("revoked g-0123456789ab  user:dev                 hr-test hr_prod.salary")

    held = {"object": "hr_prod.salary", "privileges": ["SELECT"], "expires_at": None, "source": "policy a.yaml"}
    plain, _ = _run_cli(monkeypatch, capsys, [held], "access")
    assert plain.startswith("hr_prod.salary ")
    mixed, _ = _run_cli(monkeypatch, capsys, [{**held, "instance": "hr-prod"}, {**held, "instance": "*"}], "access")
    assert [line.split()[0] for line in mixed.splitlines()] == ["hr-prod", "*"]

    out, _ = _run_cli(monkeypatch, capsys, _request("hr-prod", grant_ids=["g-1"]), "request", "show", "r-1")
    assert "hr-prod prod" in out.splitlines()[0]
    out, _ = _run_cli(monkeypatch, capsys, _request("hr-prod", status="approved"), "request", "approve", "r-1")
    assert out.strip() == "request r-0123456789ab on hr-prod: approved"

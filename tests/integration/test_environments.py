"""One environment model, live: the demo's way of declaring environments (upstream.environments:
hr_prod is prod, hr_test is test) makes statements, requests, the audit mode and the deny hint
all say the same. Before, statements said `"environment": null` for hr_prod while its requests
said prod, so prod's fail_closed audit mode did not apply. A real proxy in front of the real
MariaDB."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from jitproxy_demo.inprocess import RunningProxy
from tests.helpers import api_cli
from tests.integration.conftest import client_ssl, proxy_with_environments

APPROVALS = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 30m}
  - {environment: test, privileges: ALL, auto_approve: true, max_duration: 1d}
"""


@pytest.fixture(scope="module")
def declared(tmp_path_factory, mariadb, tls_files, upstream_credentials) -> Iterator[RunningProxy]:
    running = proxy_with_environments(tmp_path_factory, mariadb, tls_files, upstream_credentials, "env", APPROVALS)
    yield running
    running.stop()


def _statements(proxy: RunningProxy, marker: str) -> list[dict]:
    return [e for e in proxy.events if e["type"].startswith("statement.") and marker in (e.get("statement") or "")]


def test_statements_are_in_the_environment_of_the_databases_they_name(declared, tls_files):
    session = pymysql.connect(host="127.0.0.1", port=declared.port, user="admin", password=declared.token("admin"),
                              database="hr_test", ssl=client_ssl(tls_files), autocommit=True)
    with session.cursor() as cur:
        for sql in ("SELECT COUNT(*) FROM employee /*env-1*/",  # the current database's
                    "SELECT COUNT(*) FROM hr_prod.employee /*env-2*/",  # what it names
                    "SELECT COUNT(*) FROM employee e JOIN hr_prod.salary s ON s.employee_id = e.id /*env-3*/",
                    "SELECT 1 /*env-4*/"):
            cur.execute(sql)
    session.close()
    said = {marker: {e["environment"] for e in _statements(declared, marker)} for marker in
            ("env-1", "env-2", "env-3", "env-4")}
    assert said == {"env-1": {"test"}, "env-2": {"prod"}, "env-3": {"prod"}, "env-4": {"test"}}
    session_events = [e for e in declared.events if e["type"] == "session.start" and e.get("user") == "admin"]
    assert session_events and all(e["environment"] is None for e in session_events)  # the instance names none


def test_an_instance_holding_prod_audits_its_sessions_fail_closed(declared, tls_files):
    """fail_closed: `statement.allowed` is written before the statement runs (best_effort writes
    one event when it ends), also for a statement on hr_test: any statement may name hr_prod."""
    session = pymysql.connect(host="127.0.0.1", port=declared.port, user="dev", password=declared.token("dev"),
                              database="hr_prod", ssl=client_ssl(tls_files), autocommit=True)
    with session.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM employee /*env-fc*/")
    session.close()
    events = _statements(declared, "env-fc")
    assert [e["type"] for e in events] == ["statement.allowed", "statement.completed"], events
    assert {e["environment"] for e in events} == {"prod"}


def test_requests_say_the_environment_their_statements_say_and_the_hint_its_maximum(
        declared, tls_files, monkeypatch, capsys):
    session = pymysql.connect(host="127.0.0.1", port=declared.port, user="envdev", password=declared.token("envdev"),
                              ssl=client_ssl(tls_files), autocommit=True)
    with pytest.raises(pymysql.MySQLError) as e, session.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary /*env-hint*/")
    session.close()
    # prod lets a SELECT be asked for 30 minutes at most: the hint asks for that, not a refused hour
    assert "jitproxy request create --db hr_prod --table salary --privilege SELECT --for 30m" in e.value.args[1]
    (denied,) = _statements(declared, "env-hint")
    code, out = api_cli(monkeypatch, capsys, declared, "envdev", (), "request", "create", "--db", "hr_prod",
                        "--table", "salary", "--for", "30m", "--reason", "INC-12 check", ca=tls_files.ca_cert)
    assert code == 0, out
    (created,) = [e for e in declared.events if e["type"] == "request.created" and e.get("requester") == "envdev"]
    assert denied["environment"] == created["environment"] == "prod"

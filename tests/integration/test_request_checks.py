"""Requests are checked against the live schema of their instance before they are stored (the
proxy's own side connection, information_schema): a database or table it does not hold is
refused with the closest names; `*` (every table) only where the approval policy allows it; a
database that cannot say what it holds refuses the request (503) and nothing is stored. A real
proxy in front of the real MariaDB, through the CLI."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from tests.helpers import HR_ENVIRONMENTS, api_cli
from tests.integration.conftest import POLICY, local_proxy_config

APPROVALS = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 8h}
  - {environment: test, privileges: ALL, auto_approve: true, max_duration: 1d}
"""


def _proxy(tmp_path_factory: pytest.TempPathFactory, mariadb: LocalMariaDB, tls_files: TlsFiles,
           upstream_credentials: Credentials, **upstream: object) -> RunningProxy:
    policies = tmp_path_factory.mktemp("checked-policies")
    (policies / "base.yaml").write_text(POLICY)
    (policies / "approvals.yaml").write_text(APPROVALS)
    cfg = local_proxy_config(tmp_path_factory.mktemp("checked-proxy"), mariadb, tls_files, upstream_credentials,
                             policies, extra={"upstream": {"environments": HR_ENVIRONMENTS, **upstream}})
    return RunningProxy(cfg)


@pytest.fixture(scope="module")
def checked(tmp_path_factory, mariadb, tls_files, upstream_credentials) -> Iterator[RunningProxy]:
    running = _proxy(tmp_path_factory, mariadb, tls_files, upstream_credentials)
    yield running
    running.stop()


def _create(monkeypatch, capsys, proxy: RunningProxy, tls_files: TlsFiles, user: str, *argv: str) -> tuple[int, str]:
    return api_cli(monkeypatch, capsys, proxy, user, (), "request", "create", *argv, "--for", "1h",
                   "--reason", "INC-5 checked", ca=tls_files.ca_cert)


def _stored(proxy: RunningProxy, user: str) -> list:
    assert proxy.ctx.workflow is not None
    return proxy.ctx.workflow.store.requests(requester=user)


def test_a_table_that_does_not_exist_is_refused_with_the_closest_names(checked, tls_files, monkeypatch, capsys):
    code, out = _create(monkeypatch, capsys, checked, tls_files, "rc1", "--db", "hr_prod", "--table", "salaries")
    assert code == 1 and "refused (400): no table 'salaries' in hr_prod; did you mean salary?" in out, out
    code, out = _create(monkeypatch, capsys, checked, tls_files, "rc1", "--db", "hr_prod", "--table", "salary",
                        "--table", "Employee")  # names are compared as the server keeps them
    assert code == 1 and "no table 'Employee' in hr_prod; did you mean employee?" in out, out
    assert _stored(checked, "rc1") == []
    code, out = _create(monkeypatch, capsys, checked, tls_files, "rc1", "--db", "hr_prod", "--table", "salary")
    assert code == 0 and "pending" in out, out


def test_a_database_that_does_not_exist_is_refused_never_taken_for_prod(checked, tls_files, monkeypatch, capsys):
    code, out = _create(monkeypatch, capsys, checked, tls_files, "rc2", "--db", "hr_prd", "--table", "salary")
    assert code == 1 and "refused (400): no database 'hr_prd'; did you mean hr_prod?" in out, out
    code, out = _create(monkeypatch, capsys, checked, tls_files, "rc2", "--db", "information_schema",
                        "--table", "TABLES")
    assert code == 1 and "refused (403): information_schema is in no environment" in out, out  # none declared
    assert _stored(checked, "rc2") == []


def test_every_table_only_where_the_approval_policy_allows_it(checked, tls_files, monkeypatch, capsys):
    code, out = _create(monkeypatch, capsys, checked, tls_files, "rc3", "--db", "hr_prod", "--table", "*")
    assert code == 1 and "refused (403): every table of hr_prod (--table '*') cannot be requested in prod" in out
    assert "wildcard_tables: true" in out
    code, out = _create(monkeypatch, capsys, checked, tls_files, "rc3", "--db", "hr_test", "--table", "*", "--json")
    assert code == 0, out
    (request,) = _stored(checked, "rc3")
    assert (request.environment, request.tables, request.status.value) == ("test", ("*",), "approved")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_database_that_cannot_be_asked_refuses_the_request_and_stores_nothing(
        tmp_path_factory, mariadb, tls_files, upstream_credentials, monkeypatch, capsys):
    down = _proxy(tmp_path_factory, mariadb, tls_files, upstream_credentials, port=_closed_port(),
                  connect_timeout_s=1, pool={"connect_deadline_s": 0})
    try:
        code, out = _create(monkeypatch, capsys, down, tls_files, "rc4", "--db", "hr_prod", "--table", "salary")
        assert code == 1 and "refused (503): the request was not stored: it could not be checked against the " \
                             "database (the database of instance default did not answer" in out, out
        assert _stored(down, "rc4") == []
    finally:
        down.stop()

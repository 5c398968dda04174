"""Several upstream instances in one proxy: each on its own port, grants scoped to an instance
apply there only (statements and metadata), audit events name the instance and its environment."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from proxy.cli import main
from tests.integration.conftest import client_ssl, local_proxy_config

POLICY = """
grants:
  - subject: user:inst-dev          # only on the test instance
    grant: hr_prod.employee
    privileges: [SELECT]
    instance: hr-test
  - subject: user:inst-dev          # on every instance
    grant: hr_prod.title
    privileges: [SELECT]

approval_policies:                  # no db mapping: the instance's environment decides
  - {environment: test, privileges: ALL, auto_approve: true, max_duration: 1d}
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 8h}
"""


@pytest.fixture(scope="module")
def two_instances(
    tmp_path_factory: pytest.TempPathFactory,
    mariadb: LocalMariaDB,
    tls_files: TlsFiles,
    upstream_credentials: Credentials,
) -> Iterator[RunningProxy]:
    policies = tmp_path_factory.mktemp("instance-policies")
    (policies / "grants.yaml").write_text(POLICY)
    cfg = local_proxy_config(
        tmp_path_factory.mktemp("instances"), mariadb, tls_files, upstream_credentials, policies,
        instances=[
            {"name": "hr-prod", "environment": "prod", "listen_port": 0},
            {"name": "hr-test", "environment": "test", "listen_port": 0},
        ],
    )
    running = RunningProxy(cfg)
    yield running
    running.stop()


def _connect(proxy: RunningProxy, instance: str, tls_files: TlsFiles, user: str = "inst-dev") -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.server.ports[instance], user=user,
                           password=proxy.token(user), ssl=client_ssl(tls_files), autocommit=True)


def test_each_instance_listens_on_its_own_port(two_instances):
    ports = two_instances.server.ports
    assert set(ports) == {"hr-prod", "hr-test"} and ports["hr-prod"] != ports["hr-test"]


def test_a_grant_scoped_to_one_instance_opens_nothing_on_another(two_instances, tls_files):
    on_test = _connect(two_instances, "hr-test", tls_files)
    on_prod = _connect(two_instances, "hr-prod", tls_files)
    with on_test.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM hr_prod.employee")
        assert cur.fetchone()[0] > 0
    with on_prod.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as e:
            cur.execute("SELECT COUNT(*) FROM hr_prod.employee")
        assert e.value.args[0] == 1142
        assert "jitproxy request create --instance hr-prod --db hr_prod --table employee" in e.value.args[1]
        cur.execute("SELECT COUNT(*) FROM hr_prod.title")  # the every-instance grant
        cur.execute("SHOW TABLES FROM hr_prod")
        assert [r[0] for r in cur.fetchall()] == ["title"]  # visibility follows the instance too
    with on_test.cursor() as cur:
        cur.execute("SHOW TABLES FROM hr_prod")
        assert sorted(r[0] for r in cur.fetchall()) == ["employee", "title"]
    on_test.close()
    on_prod.close()


def test_audit_events_name_the_instance_and_environment(two_instances, tls_files):
    conn = _connect(two_instances, "hr-prod", tls_files, "inst-auditee")
    with conn.cursor() as cur, pytest.raises(pymysql.MySQLError):
        cur.execute("SELECT * FROM hr_prod.salary")
    conn.close()
    events = [e for e in two_instances.events if e.get("user") == "inst-auditee"]
    assert {e["type"] for e in events} >= {"session.start", "statement.denied"}
    assert all((e["instance"], e["environment"]) == ("hr-prod", "prod") for e in events), events


def test_a_request_names_its_instance_whose_environment_picks_the_policy(two_instances, tls_files, monkeypatch, capsys):
    proxy = two_instances
    monkeypatch.setenv("JITPROXY_API", f"https://127.0.0.1:{proxy.server.api.port}")
    monkeypatch.setenv("JITPROXY_CA", str(tls_files.ca_cert))
    monkeypatch.setenv("JITPROXY_TOKEN", proxy.token("inst-req"))
    create = ["request", "create", "--db", "hr_prod", "--table", "salary", "--for", "1h", "--reason", "INC-5"]
    with pytest.raises(SystemExit) as e:
        main(create)
    assert "name the instance" in str(e.value.code) and "hr-prod, hr-test" in str(e.value.code)
    assert main([*create, "--instance", "hr-test"]) == 0
    assert "on hr-test: approved" in capsys.readouterr().out  # test: approved at once
    assert main([*create, "--instance", "hr-prod"]) == 0
    assert "on hr-prod: pending" in capsys.readouterr().out  # prod: an owner must approve
    proxy.call(proxy.ctx.grants.refresh())
    on_test, on_prod = (_connect(proxy, name, tls_files, "inst-req") for name in ("hr-test", "hr-prod"))
    with on_test.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
    with on_prod.cursor() as cur, pytest.raises(pymysql.MySQLError) as denied:
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
    assert denied.value.args[0] == 1142
    on_test.close()
    on_prod.close()
    created = [e for e in proxy.events if e["type"] == "request.created" and e.get("requester") == "inst-req"]
    assert [(e["instance"], e["environment"]) for e in created] == [("hr-test", "test"), ("hr-prod", "prod")]

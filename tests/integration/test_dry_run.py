"""`jitproxy check` sees what the proxy sees: it decides with the grants in effect (the policy
files and the state store: approved requests, direct grants), at a given moment (--at), naming
the grant that decides. From a config this machine can read, or, for a person without it, through
the admin API (POST /v1/check) with their own token, where the proxy also reads views as its
sessions do. A real proxy in front of the real MariaDB, through the CLI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pymysql
import pytest
import yaml

from jitproxy_demo.inprocess import RunningProxy
from proxy import cli
from tests.helpers import api_cli, run_cli
from tests.integration.conftest import client_ssl, proxy_with_environments

APPROVALS = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 8h}
  - {environment: test, privileges: ALL, auto_approve: true, max_duration: 1d}
"""


@pytest.fixture(scope="module")
def dry(tmp_path_factory, mariadb, tls_files, upstream_credentials) -> Iterator[RunningProxy]:
    running = proxy_with_environments(tmp_path_factory, mariadb, tls_files, upstream_credentials, "dry", APPROVALS)
    yield running
    running.stop()


@pytest.fixture
def api(dry, tls_files, monkeypatch, tmp_path) -> RunningProxy:
    """The CLI finds no config to read here: `jitproxy check` asks the proxy."""
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("JITPROXY_API", f"https://127.0.0.1:{dry.server.api.port}")
    monkeypatch.setenv("JITPROXY_CA", str(tls_files.ca_cert))
    offset = dry.clock.offset
    yield dry
    dry.clock.offset = offset


@pytest.fixture
def config_file(dry, tmp_path) -> Path:
    """What an operator's machine reads: the proxy's policy files and state store."""
    raw = dry.cfg.model_dump(mode="json", exclude_defaults=True, exclude_none=True,
                             include={"listen", "identity", "upstream", "policies", "store"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _as(monkeypatch, capsys, proxy: RunningProxy, user: str, *argv: str, groups: tuple[str, ...] = ()) -> tuple[int, str]:
    return api_cli(monkeypatch, capsys, proxy, user, groups, *argv)


def test_after_an_approved_request_the_dry_run_allows_what_the_proxy_allows(api, config_file, tls_files,
                                                                           monkeypatch, capsys):
    sql = "SELECT COUNT(*) FROM salary"
    code, out = _as(monkeypatch, capsys, api, "dr1", "check", "--db", "hr_prod", sql)
    assert code == 1 and "decision:   DENY" in out and "statement:  SELECT (query) in prod" in out, out
    assert "jitproxy request create --db hr_prod --table salary --privilege SELECT --for 1h" in out

    code, out = _as(monkeypatch, capsys, api, "dr1", "request", "create", "--db", "hr_prod", "--table", "salary",
                    "--for", "2h", "--reason", "INC-3 payroll", "--quiet")
    request_id = out.strip()
    code, out = _as(monkeypatch, capsys, api, "olga", "request", "approve", request_id, groups=("project-owner",))
    assert code == 0, out
    (grant_id,) = api.ctx.workflow.store.get_request(request_id).grant_ids
    approved_at = api.clock()

    # through the API, with the person's own token; from the config, with the same store
    for code, out in (_as(monkeypatch, capsys, api, "dr1", "check", "--db", "hr_prod", sql),
                      run_cli(capsys, "check", "--config", str(config_file), "--user", "dr1", "--db", "hr_prod",
                              sql)[:2]):
        assert code == 0 and "decision:   ALLOW" in out, out
        assert "granted by: user:dr1 hr_prod.salary (" in out and f"in store:{grant_id} (request {request_id})" in out
        assert "with 0 policy-file and 1 store grant(s) of theirs in effect then" in out
    session = pymysql.connect(host="127.0.0.1", port=api.port, user="dr1", password=api.token("dr1"),
                              database="hr_prod", ssl=client_ssl(tls_files))
    with session.cursor() as cur:  # the live proxy agrees
        cur.execute(sql)
        assert cur.fetchone()[0] > 0
    session.close()

    # --at: after its end, and before its approval, nothing of it is in effect
    for at in (approved_at + timedelta(hours=3), approved_at - timedelta(minutes=5)):
        stamp = at.isoformat()
        for code, out in (_as(monkeypatch, capsys, api, "dr1", "check", "--at", stamp, "--db", "hr_prod", sql),
                          run_cli(capsys, "check", "--config", str(config_file), "--user", "dr1", "--at", stamp,
                                  "--db", "hr_prod", sql)[:2]):
            assert code == 1 and "decision:   DENY" in out and "with 0 policy-file and 0 store grant(s)" in out, out


def test_a_person_dry_runs_their_own_statements_and_an_admin_anyones(api, monkeypatch, capsys):
    code, out = _as(monkeypatch, capsys, api, "dr2", "check", "--user", "dev", "--db", "hr_prod",
                    "SELECT * FROM employee")
    assert code == 1 and "refused (403): a dry run for someone else (dev) is for admins" in out, out
    code, out = _as(monkeypatch, capsys, api, "dr2", "check", "--group", "dba", "SELECT 1")
    assert code == 1 and "--group goes with --user" in out
    code, out = _as(monkeypatch, capsys, api, "ada", "check", "--user", "dev", "--db", "hr_prod",
                    "SELECT * FROM employee", groups=("dba",))
    assert code == 0 and "as:         dev on default" in out and "policy file" not in out, out
    assert re.search(r"granted by: user:dev hr_prod\.employee \(no expiry\) in .*base\.yaml", out), out


def test_the_proxys_dry_run_reads_views_as_its_sessions_do(api, config_file, monkeypatch, capsys, tls_files):
    """A view in hr_test reading hr_prod.salary: a grant on hr_test.* is not enough, for the live
    proxy and for its dry run; a dry run from the config alone cannot know, and says so."""
    code, out = _as(monkeypatch, capsys, api, "ada", "grant", "add", "--user", "dr3", "--grant", "hr_test.*",
                    "--for", "1h", "--reason", "pairing", groups=("dba",))
    assert code == 0, out
    admin = pymysql.connect(host="127.0.0.1", port=api.port, user="admin", password=api.token("admin"),
                            ssl=client_ssl(tls_files), autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE VIEW hr_test.pay AS SELECT employee_id, amount FROM hr_prod.salary")
        sql = "SELECT * FROM hr_test.pay"
        code, out = _as(monkeypatch, capsys, api, "dr3", "check", sql)
        assert code == 1 and "views:      read as their definitions: hr_test.pay" in out, out
        assert "missing:    SELECT on hr_prod.salary" in out
        session = pymysql.connect(host="127.0.0.1", port=api.port, user="dr3", password=api.token("dr3"),
                                  ssl=client_ssl(tls_files))
        with pytest.raises(pymysql.MySQLError) as e, session.cursor() as cur:
            cur.execute(sql)
        assert e.value.args[0] == 1142
        session.close()
        code, out = run_cli(capsys, "check", "--config", str(config_file), "--user", "dr3", sql)[:2]
        assert code == 0 and "views:      not read here: a view is decided as a table" in out, out
    finally:
        with admin.cursor() as cur:
            cur.execute("DROP VIEW hr_test.pay")
        admin.close()

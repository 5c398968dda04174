"""`jitproxy config check` prints which database is in which environment, instance by instance
(proxy.environments), the audit mode its sessions get, and where nothing can be requested; an
`environments:` map left in a policy file is refused, saying where it belongs now."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jitproxy_demo.inprocess import write_keys
from tests.helpers import run_cli

APPROVALS = "approval_policies:\n  - {environment: prod, privileges: [SELECT], approvers: [group:owner]}\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    _, public = write_keys(tmp_path / "keys")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "approvals.yaml").write_text(APPROVALS)
    one = {"host": "127.0.0.1", "user": "jitproxy", "password": "x"}
    raw = {
        "listen": {"tls": {"cert_file": "cert.pem", "key_file": "key.pem"}},
        "identity": {"issuers": [{"issuer": "jitproxy", "public_key_file": str(public)}]},
        "upstreams": [
            {**one, "name": "hr-prod", "listen_port": 3307, "environment": "prod",
             "environments": {"scratch": "dev"}},
            {**one, "name": "hr-test", "listen_port": 3308, "environments": {"hr_test": "test"}},
        ],
        "policies": {"dirs": ["policies"]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_check_prints_each_instances_databases_and_their_environment(config, capsys):
    code, out, err = run_cli(capsys, "config", "check", "--config", str(config))
    assert code == 0, err
    assert out.splitlines()[1:] == [
        "environments (instance: database -> environment):",
        "  hr-prod (audit mode fail_closed):",
        "    scratch -> dev (no approval policy: nothing can be requested there)",
        "    every other database -> prod",
        "  hr-test (audit mode best_effort):",
        "    hr_test -> test (no approval policy: nothing can be requested there)",
        "    every other database -> none declared (nothing can be requested there)",
    ]


def test_an_environments_map_in_a_policy_file_is_refused_with_where_it_belongs(config, capsys):
    (config.parent / "policies" / "approvals.yaml").write_text("environments: {hr_prod: prod}\n" + APPROVALS)
    code, _, err = run_cli(capsys, "config", "check", "--config", str(config))
    assert code == 2
    assert "approvals.yaml: environments: a database's environment is set in the config now" in err
    assert "upstream.environments" in err

"""The admin CLI: tokens, dry-run checks and grants, against a config written here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import yaml

from jitproxy_demo.inprocess import write_keys
from proxy.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    private, public = write_keys(tmp_path / "keys")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "base.yaml").write_text(
        "grants:\n  - {subject: user:dev, grant: hr_prod.employee, privileges: [SELECT]}\n"
        "approval_policies:\n  - {environment: prod, privileges: [SELECT], approvers: [group:owner], max_duration: 8h}\n"
    )
    raw = {
        "listen": {"tls": {"cert_file": "cert.pem", "key_file": "key.pem"}},
        "identity": {"issuers": [{"issuer": "jitproxy", "public_key_file": str(public)}],
                     "signing": {"private_key_file": str(private)}},
        "upstream": {"host": "127.0.0.1", "user": "jitproxy", "password": "x", "environment": "prod"},
        "policies": {"dirs": ["policies"]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_token_issue_prints_a_verifiable_token(config, capsys):
    assert main(["token", "issue", "--config", str(config), "--user", "dev", "--group", "oncall", "--ttl", "2h"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "dev" and claims["groups"] == ["oncall"] and claims["exp"] - claims["iat"] == 7200


def test_token_issue_refuses_a_ttl_over_the_maximum(config):
    with pytest.raises(ValueError, match="max_ttl"):
        main(["token", "issue", "--config", str(config), "--user", "dev", "--ttl", "13h"])


def test_check_explains_allow_and_deny(config, capsys):
    assert main(["check", "--config", str(config), "--user", "dev", "--db", "hr_prod", "SELECT * FROM employee"]) == 0
    out = capsys.readouterr().out
    assert "ALLOW" in out and "granted by: user:dev hr_prod.employee" in out
    assert main(["check", "--config", str(config), "--user", "dev", "--db", "hr_prod",
                 "SELECT * FROM employee e JOIN salary s ON s.employee_id = e.id"]) == 1
    out = capsys.readouterr().out
    assert "DENY" in out and "missing_grant" in out and "SELECT on hr_prod.salary" in out
    assert "jitproxy request create --db hr_prod --table salary --privilege SELECT --for 1h" in out


def test_check_explains_statement_level_denials(config, capsys):
    assert main(["check", "--config", str(config), "--user", "dev", "SELECT 1 /*!50000 , 2 */"]) == 1
    assert "executable_comment" in capsys.readouterr().out


def test_api_commands_need_https_and_a_token(monkeypatch, capsys):
    monkeypatch.delenv("JITPROXY_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="no token"):
        main(["request", "list", "--api", "https://127.0.0.1:1"])
    monkeypatch.setenv("JITPROXY_TOKEN", "x.y.z")
    with pytest.raises(SystemExit, match="https://"):
        main(["request", "list", "--api", "http://127.0.0.1:1"])
    with pytest.raises(SystemExit, match="cannot reach the jitproxy API"):
        main(["access", "--api", "https://127.0.0.1:1"])


def test_config_error_names_key_and_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("listen: {tls: {cert_file: a, key_file: b}, bogus: 1}\n")
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: listen.bogus: unknown key" in err


def test_check_explains_metadata_restriction_and_guardrails(config, capsys):
    assert main(["check", "--config", str(config), "--user", "dev",
                 "SELECT TABLE_NAME FROM information_schema.TABLES"]) == 0
    out = capsys.readouterr().out
    assert "information_schema.tables restricted to granted objects" in out and "forwarded:  SELECT" in out
    assert main(["check", "--config", str(config), "--user", "dev", "--db", "hr_prod", "DELETE FROM employee"]) == 1
    assert "missing" in capsys.readouterr().out


def test_check_shows_masks_and_the_forwarded_text(config, capsys):
    (config.parent / "policies" / "masks.yaml").write_text(
        "masks:\n  - {subject: user:dev, table: hr_prod.employee, columns: {email: redact}}\n"
    )
    assert main(["check", "--config", str(config), "--user", "dev", "--db", "hr_prod",
                 "SELECT id, email FROM employee"]) == 0
    out = capsys.readouterr().out
    assert "masked:     hr_prod.employee.email (redact)" in out
    assert "forwarded:  SELECT id, '****' AS `email` FROM employee" in out
    assert main(["check", "--config", str(config), "--user", "dev", "--db", "hr_prod",
                 "SELECT id FROM employee WHERE email LIKE 'a%'"]) == 1
    out = capsys.readouterr().out
    assert "DENY" in out and "masked_column" in out


def test_check_with_several_instances_names_the_instance(config, capsys):
    raw = yaml.safe_load(config.read_text())
    one = raw.pop("upstream")
    raw["upstreams"] = [{**one, "name": "hr-prod", "listen_port": 3307}, {**one, "name": "hr-test", "listen_port": 3308}]
    config.write_text(yaml.safe_dump(raw))
    (config.parent / "policies" / "base.yaml").write_text(
        "grants:\n  - {subject: user:dev, grant: hr_prod.employee, privileges: [SELECT], instance: hr-test}\n"
        "approval_policies:\n  - {environment: prod, privileges: [SELECT], approvers: [group:owner]}\n")
    sql = "SELECT * FROM hr_prod.employee"
    with pytest.raises(SystemExit, match="one of hr-prod, hr-test"):
        main(["check", "--config", str(config), "--user", "dev", sql])
    with pytest.raises(SystemExit, match="no instance 'nope'"):
        main(["check", "--config", str(config), "--user", "dev", "--instance", "nope", sql])
    assert main(["check", "--config", str(config), "--user", "dev", "--instance", "hr-test", sql]) == 0
    capsys.readouterr()
    assert main(["check", "--config", str(config), "--user", "dev", "--instance", "hr-prod", sql]) == 1
    assert "jitproxy request create --instance hr-prod --db hr_prod --table employee" in capsys.readouterr().out


def test_demo_without_the_demo_package_says_so_in_one_line(tmp_path):
    """An install without jitproxy_demo (the image copies only proxy/): `jitproxy demo` says what
    is missing in one line, no traceback, and writes nothing."""
    hide = ("import sys\n"
            "class Absent:\n"  # what Python raises when no jitproxy_demo is on the path
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'jitproxy_demo':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Absent())\n"
            "from proxy.cli import main\n"
            f"sys.exit(main(['demo', '--dir', {str(tmp_path / 'demo')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "jitproxy demo: the demo is not installed here (no jitproxy_demo package); "
        "run it from a source checkout: bash scripts/demo.sh"]
    assert not (tmp_path / "demo").exists()

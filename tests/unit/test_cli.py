"""The admin CLI: tokens, dry-run checks and grants, against a config written here."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
import yaml

from proxy.cli import main
from proxy.testing import write_keys


@pytest.fixture
def config(tmp_path: Path) -> Path:
    private, public = write_keys(tmp_path / "keys")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "base.yaml").write_text(
        "grants:\n  - {subject: user:dev, grant: hr_prod.employee, privileges: [SELECT]}\n"
    )
    raw = {
        "listen": {"tls": {"cert_file": "cert.pem", "key_file": "key.pem"}},
        "identity": {"issuers": [{"issuer": "jitproxy", "public_key_file": str(public)}],
                     "signing": {"private_key_file": str(private)}},
        "upstream": {"host": "127.0.0.1", "user": "jitproxy", "password": "x"},
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
    assert "jitproxy grant add --user dev --grant hr_prod.salary --privilege SELECT" in out


def test_check_explains_statement_level_denials(config, capsys):
    assert main(["check", "--config", str(config), "--user", "dev", "SELECT 1 /*!50000 , 2 */"]) == 1
    assert "executable_comment" in capsys.readouterr().out


def test_grant_add_then_check_allows_until_expiry(config, capsys):
    assert main(["grant", "add", "--config", str(config), "--user", "dev", "--grant", "hr_prod.salary", "--for", "1h"]) == 0
    capsys.readouterr()
    assert main(["check", "--config", str(config), "--user", "dev", "--db", "hr_prod", "SELECT * FROM salary"]) == 0
    doc = yaml.safe_load((config.parent / "policies" / "jit-grants.yaml").read_text())
    assert doc["grants"][0]["subject"] == "user:dev" and doc["grants"][0]["expires_at"].endswith("Z")
    # granting again replaces the entry instead of creating an overlap
    assert main(["grant", "add", "--config", str(config), "--user", "dev", "--grant", "hr_prod.salary", "--for", "2h"]) == 0
    doc = yaml.safe_load((config.parent / "policies" / "jit-grants.yaml").read_text())
    assert len(doc["grants"]) == 1


def test_grant_add_refuses_an_overlap_with_a_policy_file(config):
    with pytest.raises(SystemExit, match="twice"):
        main(["grant", "add", "--config", str(config), "--user", "dev", "--grant", "hr_prod.employee"])


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

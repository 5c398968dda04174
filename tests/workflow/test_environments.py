"""One environment model (proxy.environments), pure: an instance's environment, a database's own,
a statement's (the databases it names), the audit mode a session gets, and the configuration
that declares them."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.audit.events import mode_for
from proxy.authz.analyze import analyze
from proxy.config import ConfigError, config_from_dict
from proxy.environments import Environments, InstanceEnvironments, strictest

HR = InstanceEnvironments(None, {"hr_prod": "prod", "hr_test": "test"})
PROD_WITH_SCRATCH = InstanceEnvironments("prod", {"scratch": "dev"})


def test_a_database_is_in_its_own_environment_else_its_instances():
    assert PROD_WITH_SCRATCH.of("hr_prod") == "prod"
    assert PROD_WITH_SCRATCH.of("scratch") == "dev"
    assert PROD_WITH_SCRATCH.of(None) == "prod"
    assert HR.of("billing") is None  # undeclared: never guessed


@pytest.mark.parametrize(("sql", "current", "expected"), [
    ("SELECT * FROM employee", "hr_prod", "prod"),
    ("SELECT * FROM employee", "hr_test", "test"),
    ("SELECT * FROM hr_prod.salary", "hr_test", "prod"),  # what it names, not where the session is
    ("SELECT * FROM hr_test.employee e JOIN hr_prod.salary s ON s.employee_id = e.id", None, "prod"),
    ("SELECT 1", "hr_test", "test"),  # names nothing: the current database's
    ("SELECT 1", None, None),
    ("USE hr_prod", "hr_test", "prod"),
    ("SELECT * FROM mysql.user", "hr_prod", None),
])
def test_a_statement_is_in_the_environment_of_the_databases_it_names(sql, current, expected):
    assert HR.of_statement(analyze(sql, current), current) == expected


def test_an_instance_without_overrides_answers_its_own_environment_at_once():
    assert InstanceEnvironments("test").of_statement(analyze("SELECT * FROM hr_prod.salary", None), None) == "test"


def test_of_several_the_strictest_is_said():
    assert strictest(["test", "prod", None]) == "prod"
    assert strictest(["test", "dev"]) == "dev"  # by name: never by order
    assert strictest([None, "test"]) == "test"
    assert strictest([None]) is None


def test_a_session_is_audited_as_strictly_as_the_strictest_database_of_its_instance():
    assert HR.possible == frozenset({None, "prod", "test"})
    assert mode_for("auto", HR.possible) == "fail_closed"
    assert mode_for("auto", InstanceEnvironments(None, {"hr_test": "test"}).possible) == "best_effort"
    assert mode_for("auto", InstanceEnvironments().possible) == "best_effort"
    assert mode_for("best_effort", HR.possible) == "best_effort"  # a configured mode is kept


def _config(tmp_path: Path, **upstream: object) -> dict:
    return {
        "listen": {"tls": {"cert_file": "c.pem", "key_file": "k.pem"}},
        "identity": {"issuers": [{"issuer": "i", "public_key_file": "k.pub"}]},
        "upstream": {"host": "db", "user": "u", "password": "p", **upstream},
    }


def test_the_config_declares_them_per_instance(tmp_path):
    cfg = config_from_dict(_config(tmp_path, environment="prod", environments={"scratch": "dev"}),
                           tmp_path / "c.yaml")
    envs = Environments.from_config(cfg)
    assert envs.of("default", "hr_prod") == "prod" and envs.of("default", "scratch") == "dev"
    # "*" (a request of a one-`upstream:` proxy): the strictest on every instance
    assert envs.of("*", "scratch") == "dev"


def test_for_every_instance_a_database_is_in_its_strictest_environment():
    envs = Environments({"a": InstanceEnvironments("test"), "b": InstanceEnvironments("prod")})
    assert envs.of("*", "hr") == "prod"
    assert envs.of("a", "hr") == "test"


@pytest.mark.parametrize("upstream", [
    {"environments": {"hr_prod": "Prod"}},
    {"environments": {"": "prod"}},
    {"environment": "production env"},
])
def test_an_environment_name_that_no_approval_policy_could_name_is_refused(tmp_path, upstream):
    with pytest.raises(ConfigError, match="upstream.environment"):
        config_from_dict(_config(tmp_path, **upstream), tmp_path / "c.yaml")

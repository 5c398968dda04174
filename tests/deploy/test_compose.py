"""docker-compose.yaml against the Compose Specification's JSON schema (vendored: VENDORED.md),
and what the deployment relies on beyond the schema: healthchecks and start order, secrets as
files, loopback-only ports, mounts that exist, the proxy's config and the MariaDB init script."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.deploy.conftest import DOCKER, ROOT, jitproxy_bin, load_yaml

COMPOSE = ROOT / "docker-compose.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
GENERATED_DIRS = ("./docker/certs", "./docker/secrets")  # docker/gen-secrets.sh writes them


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_matches_the_compose_specification(compose: dict, validator: jsonschema.Draft7Validator) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_the_schema_rejects_a_broken_compose_file(compose: dict, validator: jsonschema.Draft7Validator) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["jitproxy"]["ports"] = "3307"
    broken["services"]["jitproxy"]["depends_on"]["mariadb"]["condition"] = "service_ready"
    broken["services"]["postgres"]["helthcheck"] = {}
    errors = {"/".join(map(str, e.absolute_path)): e.message for e in validator.iter_errors(broken)}
    assert errors.keys() == {"services/jitproxy/ports", "services/jitproxy/depends_on", "services/postgres"}, errors
    assert "is not of type 'array'" in errors["services/jitproxy/ports"]
    assert "'helthcheck' does not match" in errors["services/postgres"]


def test_services_images_and_start_order(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"jitproxy", "mariadb", "postgres"}
    assert services["mariadb"]["image"].startswith("mariadb:10.11")
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["jitproxy"]["build"]["context"] == "."
    for name, service in services.items():
        assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"
        for dependency, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, (name, dependency)
            assert "test" in services[dependency]["healthcheck"]
    assert set(services["jitproxy"]["depends_on"]) == {"mariadb", "postgres"}


def test_mariadb_requires_tls(compose: dict) -> None:
    args = compose["services"]["mariadb"]["command"]
    assert "--require-secure-transport=ON" in args
    for option in ("--ssl-ca=", "--ssl-cert=", "--ssl-key=/run/secrets/"):
        assert any(a.startswith(option) for a in args), option


def test_secrets_are_files_never_values(compose: dict) -> None:
    defined = compose["secrets"]
    for name, secret in defined.items():
        assert set(secret) == {"file"} and secret["file"].startswith("./docker/secrets/"), name
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in defined, (name, secret)
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|DSN|PRIVATE", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)), f"{name}.{key} holds a credential"
    text = COMPOSE.read_text(encoding="utf-8")
    assert "BEGIN" not in text and "PRIVATE KEY" not in text


def test_only_the_proxy_is_published_and_only_on_loopback(compose: dict) -> None:
    for name, service in compose["services"].items():
        ports = service.get("ports", [])
        if name != "jitproxy":
            assert not ports, name
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), port


def test_bind_mounts_exist(compose: dict, generated: Path) -> None:
    """Repository files exist; docker/certs and docker/secrets are what gen-secrets.sh writes."""
    sources = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])]
    sources += [s["file"] for s in compose["secrets"].values()]
    for source in sources:
        if not source.startswith("./"):
            continue  # a named volume
        generated_dir = next((d for d in GENERATED_DIRS if source == d or source.startswith(d + "/")), None)
        if generated_dir is None:
            assert (ROOT / source).exists(), source
        else:
            assert (generated / source[len("./docker/"):]).exists(), f"gen-secrets.sh does not write {source}"


def test_the_proxys_config_names_what_its_container_gets(compose: dict, generated: Path) -> None:
    """Every /run/secrets/NAME of docker/jitproxy.yaml is a secret of the jitproxy service, and
    every relative file is under a directory compose mounts (or generates)."""
    service = compose["services"]["jitproxy"]
    text = (DOCKER / "jitproxy.yaml").read_text(encoding="utf-8")
    for secret in re.findall(r"/run/secrets/([A-Za-z0-9_.-]+)", text):
        assert secret in service["secrets"], secret
    config = load_yaml(DOCKER / "jitproxy.yaml")
    relative = [config["listen"]["tls"]["cert_file"], config["identity"]["issuers"][0]["public_key_file"],
                config["upstream"]["tls"]["ca_file"]]
    for path in relative:
        assert path.startswith("certs/") and (generated / path).is_file(), path
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts["/etc/jitproxy/config.yaml"] == "./docker/jitproxy.yaml"
    assert mounts["/etc/jitproxy/certs"] == "./docker/certs"
    assert mounts["/etc/jitproxy/policies"] == "./docker/policies"
    assert config["store"]["backend"] == "postgres"
    assert f"{config['store']['dsn_env']}_FILE" in service["environment"]
    assert config["upstream"]["host"] == "mariadb" and config["upstream"]["tls"]["verify_hostname"] is True


def test_docker_config_passes_jitproxy_config_check() -> None:
    result = subprocess.run([str(jitproxy_bin()), "config", "check", "--config", str(DOCKER / "jitproxy.yaml")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK (" in result.stdout


# The mariadb image's own function (its docker-entrypoint.sh, 10.11), verbatim.
IMAGE_ESCAPE_FUNCTION = r"""
docker_sql_escape_string_literal() {
	local newline=$'\n'
	local escaped=${1//\\/\\\\}
	escaped="${escaped//$newline/\\n}"
	echo "${escaped//\'/\\\'}"
}
"""


def test_mariadb_init_script_creates_the_shared_account(tmp_path: Path) -> None:
    """Sourced by the mariadb image's entrypoint (bash), with its functions stubbed here."""
    script = DOCKER / "mariadb-init" / "20-jitproxy-user.sh"
    assert not script.stat().st_mode & 0o111, "an executable init script is run, not sourced: it would lack the functions"
    password = tmp_path / "upstream-password"
    password.write_text("it's\\secret\n", encoding="utf-8")
    sql = tmp_path / "sql"
    harness = IMAGE_ESCAPE_FUNCTION + (
        f"docker_process_sql() {{ cat > '{sql}'; }}\n"
        f". '{DOCKER / 'mariadb-init' / '20-jitproxy-user.sh'}'\n"
        "set | grep '^jitproxy_init_' && exit 3\n"
        "exit 0\n"
    )
    env = {"PATH": "/usr/bin:/bin", "JITPROXY_UPSTREAM_PASSWORD_FILE": str(password)}
    result = subprocess.run(["bash", "-c", harness], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = sql.read_text(encoding="utf-8").splitlines()
    assert lines == [
        "CREATE USER 'jitproxy'@'%' IDENTIFIED BY 'it\\'s\\\\secret' REQUIRE SSL;",
        "GRANT ALL PRIVILEGES ON `hr_prod`.* TO 'jitproxy'@'%';",
        "GRANT ALL PRIVILEGES ON `hr_test`.* TO 'jitproxy'@'%';",
    ]
    # The sample databases it grants are the ones the mounted sample data creates.
    sample = (ROOT / "jitproxy_demo" / "sample_data.sql").read_text(encoding="utf-8")
    for db in ("hr_prod", "hr_test"):
        assert f"CREATE DATABASE {db}" in sample


def test_mariadb_init_script_stops_without_its_secret(tmp_path: Path) -> None:
    harness = f"docker_process_sql() {{ cat; }}\n. '{DOCKER / 'mariadb-init' / '20-jitproxy-user.sh'}'\n"
    env = {"PATH": "/usr/bin:/bin", "JITPROXY_UPSTREAM_PASSWORD_FILE": str(tmp_path / "missing")}
    result = subprocess.run(["bash", "-c", harness], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "run docker/gen-secrets.sh first" in result.stderr

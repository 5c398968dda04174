"""The Dockerfile: hadolint, what the image must do (pinned base, hash-locked installs, non-root,
healthcheck, entrypoint), and shellcheck on the deployment's shell scripts."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.conftest import DOCKER, ROOT, load_yaml, tool

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    return out


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_fails_a_known_bad_dockerfile() -> None:
    """Proves the linter runs and reports: untagged image, unpinned apt packages, no -y."""
    bad = "FROM python\nRUN apt-get install curl\n"
    result = subprocess.run([tool("hadolint"), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3014"):
        assert rule in result.stdout, result.stdout


def test_base_image_is_pinned_by_digest_in_every_stage() -> None:
    steps = _instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    first_from = next(i for i, (word, _) in enumerate(steps) if word == "FROM")
    assert ("ARG", "PYTHON_DIGEST") in steps[:first_from], "ARG PYTHON_DIGEST before the first FROM"
    for args in froms:
        image = args.split()[0]
        assert re.fullmatch(r"python:3\.11-slim-bookworm@(\$\{PYTHON_DIGEST\}|sha256:[0-9a-f]{64})", image), image


def test_dependencies_are_hash_locked_and_the_project_installed_without_deps() -> None:
    runs = [args for word, args in _instructions() if word == "RUN"]
    lock_install = [r for r in runs if "requirements.lock" in r]
    assert len(lock_install) == 1, runs
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert flag in lock_install[0]
    project = [r for r in runs if re.search(r"pip install .*/src\b", r)]
    assert project and "--no-deps" in project[0] and "--no-build-isolation" in project[0], runs
    # Nothing else is installed from an index.
    for r in runs:
        if "pip install" in r:
            assert r in lock_install or r in project, r


def test_runtime_stage_is_non_root_with_healthcheck_and_entrypoint() -> None:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    runtime = steps[last_from:]
    users = [args for word, args in runtime if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users
    assert any(word == "HEALTHCHECK" and "healthcheck.py" in args for word, args in runtime)
    assert ("ENTRYPOINT", '["/usr/local/bin/jitproxy-entrypoint"]') in runtime
    copies = [args for word, args in runtime if word == "COPY"]
    assert any("docker/entrypoint.sh /usr/local/bin/jitproxy-entrypoint" in c for c in copies)


def test_copied_files_exist() -> None:
    for word, args in _instructions():
        if word != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), source


def test_healthcheck_port_is_the_configs_api_port() -> None:
    env = " ".join(args for word, args in _instructions() if word == "ENV")
    port = re.search(r"JITPROXY_API_PORT=(\d+)", env)
    assert port, env
    config = load_yaml(DOCKER / "jitproxy.yaml")
    assert int(port.group(1)) == config["api"]["port"]
    assert config["api"]["host"] in ("0.0.0.0", "127.0.0.1"), "the healthcheck asks 127.0.0.1"
    compose = load_yaml(ROOT / "docker-compose.yaml")["services"]["jitproxy"]
    assert compose["environment"]["JITPROXY_API_PORT"] == port.group(1)
    assert f"127.0.0.1:{port.group(1)}:{config['api']['port']}" in compose["ports"]
    assert f"127.0.0.1:{config['listen']['port']}:{config['listen']['port']}" in compose["ports"]


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [DOCKER / "entrypoint.sh", DOCKER / "gen-secrets.sh", DOCKER / "lock.sh",
               DOCKER / "mariadb-init" / "20-jitproxy-user.sh"]
    result = subprocess.run([tool("shellcheck"), "--shell=sh", "--color=never", *map(str, scripts)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

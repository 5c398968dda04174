"""docker/entrypoint.sh, run as the image runs it: with a recording fake `jitproxy` (what it runs,
in which order, and that serve replaces the entrypoint's process), under every POSIX shell here;
then with the real `jitproxy`: an invalid config stops it with the errors, a valid one serves,
answers docker/healthcheck.py over verified TLS and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DOCKER, free_port, jitproxy_bin

ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"

# The fake records "PID ARGS" for every call, and for serve the variables serve would read.
FAKE_JITPROXY = """#!/bin/sh
printf '%s %s\\n' "$$" "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "config check" ]; then
  if [ -n "${FAKE_CHECK_FAILS:-}" ]; then
    echo "$4: listen.bogus: unknown key" >&2
    exit 2
  fi
  echo "$4: OK (0 grants from 1 policy dir(s))"
  exit 0
fi
printf 'env JITPROXY_CONFIG=%s JITPROXY_STORE_DSN=%s JITPROXY_STORE_DSN_FILE=%s\\n' \\
  "${JITPROXY_CONFIG-}" "${JITPROXY_STORE_DSN-<unset>}" "${JITPROXY_STORE_DSN_FILE-<unset>}" >> "$FAKE_LOG"
"""

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> list[str]:
    """/bin/sh of the image is dash (Debian); bash in POSIX mode as a second opinion."""
    return [request.param, "--posix"] if request.param == "bash" else [request.param]


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "jitproxy").write_text(FAKE_JITPROXY, encoding="utf-8")
    (bin_dir / "jitproxy").chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text("# fake\n", encoding="utf-8")
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "log"), "JITPROXY_CONFIG": str(config),
            "HOME": str(tmp_path)}


def run(shell: list[str], env: dict[str, str], *args: str) -> tuple[int, int, str, list[tuple[int, str]]]:
    """(the entrypoint's pid, exit code, stderr, the fake's calls as (pid, args))."""
    proc = subprocess.Popen([*shell, str(ENTRYPOINT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    log = Path(env["FAKE_LOG"])
    calls = []
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            pid, _, rest = line.partition(" ")
            calls.append((int(pid) if pid.isdigit() else -1, line if pid == "env" else rest))
    return proc.pid, proc.returncode, err, calls


def test_checks_the_config_then_execs_serve(shell: list[str], fake: dict[str, str]) -> None:
    pid, code, err, calls = run(shell, fake)
    assert code == 0, err
    config = fake["JITPROXY_CONFIG"]
    assert [c for _, c in calls][:2] == [f"config check --config {config}", f"serve --config {config}"]
    (check_pid, _), (serve_pid, _) = calls[:2]
    assert check_pid != pid, "the check runs as a child"
    assert serve_pid == pid, "serve replaces the entrypoint (exec): it is PID 1 and gets docker stop's SIGTERM"


def test_invalid_config_stops_before_serve(shell: list[str], fake: dict[str, str]) -> None:
    _, code, err, calls = run(shell, {**fake, "FAKE_CHECK_FAILS": "1"})
    assert code == 2
    assert "listen.bogus: unknown key" in err
    assert f"jitproxy-entrypoint: {fake['JITPROXY_CONFIG']} did not pass 'jitproxy config check'" in err
    assert "not starting" in err
    assert [c for _, c in calls] == [f"config check --config {fake['JITPROXY_CONFIG']}"]


def test_missing_config_says_where_to_mount_it(shell: list[str], fake: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "config.yaml")
    _, code, err, calls = run(shell, {**fake, "JITPROXY_CONFIG": missing})
    assert code == 2 and not calls
    assert f"no config file at {missing}: mount one there" in err


def test_default_config_path(shell: list[str], fake: dict[str, str]) -> None:
    env = {k: v for k, v in fake.items() if k != "JITPROXY_CONFIG"}
    _, code, err, _ = run(shell, env)
    assert code == 2 and "no config file at /etc/jitproxy/config.yaml" in err


def test_serve_flags_and_workers(shell: list[str], fake: dict[str, str]) -> None:
    _, code, err, calls = run(shell, {**fake, "JITPROXY_WORKERS": "3"}, "--some-flag")
    assert code == 0, err
    assert calls[1][1] == f"serve --config {fake['JITPROXY_CONFIG']} --workers 3 --some-flag"


def test_other_commands_run_as_jitproxy_commands_without_the_serve_check(shell: list[str], fake: dict[str, str]) -> None:
    pid, code, err, calls = run(shell, fake, "token", "issue", "--user", "dev")
    assert code == 0, err
    assert calls[0] == (pid, "token issue --user dev")
    assert calls[1][1].startswith(f"env JITPROXY_CONFIG={fake['JITPROXY_CONFIG']} ")


def test_file_variables_become_variables(shell: list[str], fake: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "store-dsn"
    secret.write_text("postgresql://jitproxy:s3cret@postgres:5432/jitproxy\n", encoding="utf-8")
    _, code, err, calls = run(shell, {**fake, "JITPROXY_STORE_DSN_FILE": str(secret)})
    assert code == 0, err
    assert calls[-1][1].endswith(
        "JITPROXY_STORE_DSN=postgresql://jitproxy:s3cret@postgres:5432/jitproxy JITPROXY_STORE_DSN_FILE=<unset>")


@pytest.mark.parametrize(("extra", "code", "message"), [
    ({"JITPROXY_STORE_DSN": "x", "JITPROXY_STORE_DSN_FILE": "{dir}/store-dsn"}, 64,
     "both JITPROXY_STORE_DSN and JITPROXY_STORE_DSN_FILE are set"),
    ({"JITPROXY_STORE_DSN_FILE": "{dir}/missing"}, 66, "JITPROXY_STORE_DSN_FILE: cannot read {dir}/missing"),
    ({"JITPROXY_CONFIG_FILE": "{dir}/store-dsn"}, 64, "set JITPROXY_CONFIG to the config file's path"),
])
def test_file_variable_mistakes(shell: list[str], fake: dict[str, str], tmp_path: Path,
                                extra: dict[str, str], code: int, message: str) -> None:
    (tmp_path / "store-dsn").write_text("postgresql://x\n", encoding="utf-8")
    env = {**fake, **{k: v.format(dir=tmp_path) for k, v in extra.items()}}
    _, got, err, calls = run(shell, env)
    assert got == code and not calls
    assert message.format(dir=tmp_path) in err


# -- with the real jitproxy ---------------------------------------------------------------------


def _real_env(tmp_path: Path, config: Path) -> dict[str, str]:
    return {"PATH": f"{jitproxy_bin().parent}:/usr/bin:/bin", "JITPROXY_CONFIG": str(config), "HOME": str(tmp_path),
            "JITPROXY_EVENT_LOOP": "asyncio"}


def _write_config(tmp_path: Path, generated: Path, **overrides: object) -> tuple[Path, int]:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "upstream-password").write_text("unused\n", encoding="utf-8")
    api_port = free_port()
    raw = {
        "listen": {"host": "127.0.0.1", "port": free_port(),
                   "tls": {"cert_file": str(generated / "certs" / "jitproxy.pem"),
                           "key_file": str(generated / "secrets" / "jitproxy-key.pem")}},
        "identity": {"issuers": [{"issuer": "jitproxy", "public_key_file": str(generated / "certs" / "token-signing.pub")}]},
        # Nothing listens on port 1: the proxy starts anyway (the database is reported down).
        "upstream": {"host": "127.0.0.1", "port": 1, "user": "jitproxy", "password_file": "upstream-password",
                     "pool": {"connect_deadline_s": 0}},
        "store": {"path": "state/jitproxy.db"},
        "api": {"host": "127.0.0.1", "port": api_port},
        "audit": {"sinks": [{"type": "stdout"}]},
        "log": {"format": "json"},
        **overrides,
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return config, api_port


def _healthcheck(port: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", str(HEALTHCHECK)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "JITPROXY_API_PORT": str(port), **env})


def test_real_jitproxy_invalid_config_exits_with_the_key_named(tmp_path: Path, generated: Path) -> None:
    config, _ = _write_config(tmp_path, generated, bogus_section={"x": 1})
    proc = subprocess.run(["sh", str(ENTRYPOINT)], env=_real_env(tmp_path, config), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert f"{config}: bogus_section: unknown key" in proc.stderr
    assert "did not pass 'jitproxy config check'" in proc.stderr
    assert "listening" not in proc.stderr


def test_real_jitproxy_serves_answers_the_healthcheck_and_stops_on_sigterm(tmp_path: Path, generated: Path) -> None:
    config, api_port = _write_config(tmp_path, generated)
    ca = str(generated / "certs" / "ca.pem")
    assert _healthcheck(api_port, JITPROXY_HEALTHCHECK_CA=ca).returncode == 1  # nothing there yet
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=_real_env(tmp_path, config), stdout=o, stderr=e)
    try:
        deadline = time.monotonic() + 20
        while True:
            check = _healthcheck(api_port, JITPROXY_HEALTHCHECK_CA=ca)
            if check.returncode == 0 or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert check.returncode == 0, (check.stdout, err.read_text())
        assert check.stdout.strip() == "healthy: degraded"  # the database is down, the proxy serves
        assert f"{config}: OK" in out.read_text()
        # exec: the process started as `sh entrypoint.sh` is now jitproxy serve.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in cmdline and not any(b"entrypoint" in part for part in cmdline), cmdline
        # The certificate is checked: a name it was not issued for is refused.
        wrong = _healthcheck(api_port, JITPROXY_HEALTHCHECK_CA=ca, JITPROXY_HEALTHCHECK_SERVER_NAME="db.example.com")
        assert wrong.returncode == 1 and "unhealthy" in wrong.stdout and "certificate" in wrong.stdout.lower()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert '"event": "stopped"' in err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_healthcheck_is_unhealthy_on_a_non_200(tmp_path: Path, generated: Path) -> None:
    """A TLS server answering 503 (not jitproxy): unhealthy, with the status printed."""
    import http.server
    import ssl
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(generated / "certs" / "jitproxy.pem", generated / "secrets" / "jitproxy-key.pem")
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = _healthcheck(server.server_address[1], JITPROXY_HEALTHCHECK_CA=str(generated / "certs" / "ca.pem"))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert result.stdout.strip().endswith("/healthz answered 503")

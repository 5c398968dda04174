"""The README's main job: `jitproxy demo` brings everything up and the printed commands work."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path


JITPROXY = Path(sys.executable).parent / "jitproxy"
CMD = [str(JITPROXY)] if JITPROXY.exists() else [sys.executable, "-m", "proxy.cli"]


def _start_demo(directory: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`jitproxy demo` until it prints that it is ready; its printed lines."""
    proc = subprocess.Popen(
        [*CMD, "demo", "--dir", str(directory), "--port", "0", "--api-port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    text = "".join(lines)
    assert re.search(r"jitproxy demo ready on 127\.0\.0\.1:\d+", text), text + (proc.stderr.read() if proc.poll() is not None else "")
    return proc, lines


def _stop_demo(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err
    assert "jitproxy demo: stopped" in out
    return out, err


def _printed_command(lines: list[str], user: str) -> str:
    return next(l.strip() for l in lines if l.strip().startswith("mariadb ") and f"-u {user}" in l)


def _run(command: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"{command} --batch -e {shlex.quote(sql)}"],
                          capture_output=True, text=True, timeout=60)


def test_demo_end_to_end(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    cmd = CMD
    proc, lines = _start_demo(directory)
    try:
        text = "".join(lines)
        for name in ("ca.pem", "admin.token", "dev.token", "config.yaml"):
            assert (directory / name).exists(), name
        dev_cmd = _printed_command(lines, "dev")
        admin_cmd = _printed_command(lines, "admin")
        run = _run

        ok = run(dev_cmd, "SELECT COUNT(*) FROM employee")
        assert ok.returncode == 0 and ok.stdout.split() == ["COUNT(*)", "300"], ok.stderr
        denied = run(dev_cmd, "SELECT * FROM salary")
        assert denied.returncode != 0 and "ERROR 1142" in denied.stderr
        assert "jitproxy request create --db hr_prod --table salary" in denied.stderr
        # The printed just-in-time flow, as a new user would paste it.
        export = next(l.strip() for l in lines if l.strip().startswith("export JITPROXY_API="))
        create = next(l.strip() for l in lines if "jitproxy request create" in l)
        approve = next(l.strip() for l in lines if "jitproxy request approve" in l)
        bin_dir = shlex.quote(str(Path(cmd[0]).parent)) if cmd[0].endswith("jitproxy") else ""
        env = f"{export}; export PATH={bin_dir}:$PATH; " if bin_dir else f"{export}; "
        created = subprocess.run(["bash", "-c", env + create], capture_output=True, text=True, timeout=60)
        assert created.returncode == 0 and "pending" in created.stdout, created.stderr + created.stdout
        request_id = re.search(r"request (r-[0-9a-f]+)", created.stdout).group(1)
        self_approve = subprocess.run(["bash", "-c", env + create.split(" jitproxy ")[0] + f" jitproxy request approve {request_id}"],
                                      capture_output=True, text=True, timeout=60)
        assert self_approve.returncode != 0 and "their own request" in self_approve.stderr
        approved = subprocess.run(["bash", "-c", env + approve.replace("<request id>", request_id)],
                                  capture_output=True, text=True, timeout=60)
        assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr
        now_ok = run(dev_cmd, "SELECT COUNT(*) FROM salary")
        assert now_ok.returncode == 0 and now_ok.stdout.split() == ["COUNT(*)", "600"], now_ok.stderr
        admin = run(admin_cmd, "SELECT COUNT(*) FROM salary")
        assert admin.returncode == 0 and admin.stdout.split() == ["COUNT(*)", "600"], admin.stderr
        token = (directory / "dev.token").read_text().strip()
        audit = (directory / "audit.jsonl").read_text()
        assert '"user":"dev"' in audit and '"statement.denied"' in audit
        assert token not in audit and token not in text
    finally:
        _, err = _stop_demo(proc)
    assert token not in err


def test_demo_in_iam_mode(tmp_path: Path) -> None:
    """`jitproxy demo --iam`: the proxy reaches MariaDB as Aurora IAM users do (a fresh token
    per connection, PAM-verified, TLS only); the printed commands work the same; the demo's
    AWS secret is never printed or audited; the PAM service is gone after Ctrl-C."""
    directory = tmp_path / "demo"
    proc, lines = _start_demo(directory, "--iam")
    try:
        assert "fresh AWS RDS IAM token per connection" in "".join(lines)
        ok = _run(_printed_command(lines, "dev"), "SELECT COUNT(*) FROM employee")
        assert ok.returncode == 0 and ok.stdout.split() == ["COUNT(*)", "300"], ok.stderr
        config = (directory / "config.yaml").read_text()
        assert "auth: iam" in config and "password" not in config
        decisions = [json.loads(l) for p in (directory / "mariadb").glob("jitproxy-iam-*.decisions.jsonl")
                     for l in p.read_text().splitlines()]
        assert decisions and all(d["ok"] for d in decisions) and decisions[-1]["user"] == "iam_app"
        # The demo's own PAM service (others may exist: the IAM tests' own, in this run).
        services = [p.name for p in Path("/etc/pam.d").glob("jitproxy-iam-*")
                    if (directory / "mariadb" / f"{p.name}.json").exists()]
        assert len(services) == 1
    finally:
        out, err = _stop_demo(proc)
    secret = re.search(r"aws_secret_access_key = (\S+)", (directory / "aws-credentials").read_text()).group(1)
    for where in (out, err, "".join(lines), (directory / "audit.jsonl").read_text()):
        assert secret not in where and "X-Amz-Signature" not in where
    assert not any(Path("/etc/pam.d", name).exists() for name in services)

"""The README's main job: `jitproxy demo` brings everything up and the printed commands work."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_demo_end_to_end(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    jitproxy = Path(sys.executable).parent / "jitproxy"
    cmd = [str(jitproxy)] if jitproxy.exists() else [sys.executable, "-m", "proxy.cli"]
    proc = subprocess.Popen(
        [*cmd, "demo", "--dir", str(directory), "--port", "0", "--api-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
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
        for name in ("ca.pem", "admin.token", "dev.token", "config.yaml"):
            assert (directory / name).exists(), name
        dev_cmd = next(l.strip() for l in lines if l.strip().startswith("mariadb ") and "-u dev" in l)
        admin_cmd = next(l.strip() for l in lines if l.strip().startswith("mariadb ") and "-u admin" in l)

        def run(command: str, sql: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["bash", "-c", f"{command} --batch -e {shlex.quote(sql)}"],
                                  capture_output=True, text=True, timeout=60)

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
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "jitproxy demo: stopped" in out
    assert token not in err

"""`jitproxy serve --workers 2`: two processes share the listening port (SO_REUSEPORT), each
with its own audit chain; a worker that dies is restarted; SIGTERM stops them all; a config
that cannot be shared (port 0, self-rotating audit files) is refused with the reason."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pymysql
import pytest
import yaml

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from proxy.audit.chain import verify
from proxy.identity.personal_tokens import TokenIssuer
from tests.helpers import eventually
from tests.integration.conftest import client_ssl, local_proxy_config

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, mariadb, tls_files, upstream_credentials, **changes) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "grants.yaml").write_text("grants:\n  - {subject: user:w, grant: hr_prod.title, privileges: [SELECT]}\n")
    cfg = local_proxy_config(tmp_path, mariadb, tls_files, upstream_credentials, policies)
    raw = json.loads(json.dumps(cfg.model_dump(exclude_none=True), default=lambda o: o.total_seconds()
                                if hasattr(o, "total_seconds") else str(o)))
    raw["listen"]["port"] = _free_port()
    raw["api"]["port"] = _free_port()
    raw["audit"] = {"sinks": [{"type": "file", "path": str(tmp_path / "audit.jsonl")}]}
    for key, value in changes.items():
        raw[key].update(value)
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _serve(config: Path, workers: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _instances(directory: Path) -> set[str]:
    """The proxy processes that have written a session.start to the audit file so far."""
    path = directory / "audit.jsonl"
    text = path.read_text() if path.exists() else ""
    complete = text[: text.rfind("\n") + 1].splitlines()  # a line being written is not read yet
    return {json.loads(line)["proxy_instance"] for line in complete if '"session.start"' in line}


def test_two_workers_share_the_port_restart_and_stop(tmp_path, mariadb: LocalMariaDB, tls_files: TlsFiles,
                                                     upstream_credentials: Credentials):
    config = _config(tmp_path, mariadb, tls_files, upstream_credentials)
    raw = yaml.safe_load(config.read_text())
    issuer = TokenIssuer(Path(raw["identity"]["signing"]["private_key_file"]).read_bytes(), "jitproxy", "jitproxy",
                         max_ttl=timedelta(hours=1))
    token = issuer.issue("w", (), ttl=timedelta(minutes=30))
    port = raw["listen"]["port"]
    proc = _serve(config, 2)

    def select_once() -> bool:
        try:
            conn = pymysql.connect(host="127.0.0.1", port=port, user="w", password=token, database="hr_prod",
                                   ssl=client_ssl(tls_files), connect_timeout=5)
        except pymysql.MySQLError:
            return False
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM title")
        conn.close()
        return True

    try:
        assert eventually(lambda: len(_children(proc.pid)) == 2, timeout_s=30)
        # Both workers serve: keep connecting until sessions of two processes are on record
        # (the second may still be starting when the first already answers).
        assert eventually(lambda: select_once() and len(_instances(tmp_path)) >= 2, timeout_s=60)
        first = _children(proc.pid)
        os.kill(first[0], signal.SIGKILL)  # a worker dies: the supervisor starts another
        assert eventually(lambda: len(_children(proc.pid)) == 2 and first[0] not in _children(proc.pid), timeout_s=30)
        assert eventually(select_once, timeout_s=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    report = verify(e for e in events if e["proxy_instance"] != f"{socket.gethostname()}:{first[0]}")
    assert report.ok, report.problems  # each surviving worker's chain is whole (the killed one's may end mid-batch)


@pytest.mark.parametrize("changes, message", [
    ({"listen": {"port": 0}}, "listens on port 0"),
    ({"audit": {"sinks": [{"type": "file", "path": "/tmp/x.jsonl", "max_bytes": 1000}]}}, "logrotate"),
])
def test_a_config_workers_cannot_share_is_refused(tmp_path, mariadb, tls_files, upstream_credentials, changes, message):
    config = _config(tmp_path, mariadb, tls_files, upstream_credentials, **changes)
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--workers", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode != 0 and message in result.stdout + result.stderr

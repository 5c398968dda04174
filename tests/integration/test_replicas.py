"""Two `jitproxy serve` processes sharing one PostgreSQL store: an approval made through one
replica's API opens the table for a session on the other, and a revocation closes it again,
each within 2 seconds. The measured delays are printed."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pymysql
import pytest
import yaml

from jitproxy_demo.inprocess import proxy_config
from jitproxy_demo.postgres import LocalPostgres
from proxy.identity.personal_tokens import TokenIssuer
from tests.integration.conftest import client_ssl

POLICY = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 8h}
"""
BOUND_S = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=Path(__file__).resolve().parents[2])
        self.ready = threading.Event()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "listening" in line:
                self.ready.set()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def replicas(tmp_path, mariadb, tls_files, upstream_credentials):
    basedir = Path(tempfile.mkdtemp(prefix="jitpg-", dir="/tmp"))
    server = LocalPostgres(basedir)
    server.start()
    started: list[Replica] = []
    try:
        dsn = server.create_database("replicas")
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "approvals.yaml").write_text(POLICY)
        cfg = proxy_config(
            tmp_path, upstream_host="127.0.0.1", upstream_port=mariadb.port,
            upstream_user=upstream_credentials.user, upstream_password=upstream_credentials.password,
            cert_file=tls_files.server_cert, key_file=tls_files.server_key, upstream_ca=tls_files.ca_cert,
            policies_dir=policies,
            extra={"store": {"backend": "postgres", "dsn_env": "JITPROXY_TEST_STORE_DSN"},
                   "upstream": {"environments": {"hr_prod": "prod"}}},
        )
        raw = cfg.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
        env = {**os.environ, "JITPROXY_TEST_STORE_DSN": dsn}
        ports = []
        for name in ("a", "b"):
            mysql_port, api_port = _free_port(), _free_port()
            raw["listen"]["port"], raw["api"]["port"] = mysql_port, api_port
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(raw))
            started.append(Replica(path, env))
            ports.append((mysql_port, api_port))
        for r in started:
            assert r.ready.wait(60), "".join(r.log)
        signing = cfg.identity.signing
        issuer = TokenIssuer(signing.private_key_file.read_bytes(), issuer=signing.issuer,
                             audience=signing.audience, max_ttl=timedelta(hours=12))
        yield ports, issuer
    finally:
        for r in started:
            r.stop()
        server.stop()
        shutil.rmtree(basedir, ignore_errors=True)


def _wait_until(check, bound_s: float = 5.0) -> float:
    """Seconds until `check()` is true (one round trip per attempt), or fail after `bound_s`."""
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    pytest.fail(f"not within {bound_s} s")


def test_approval_and_revocation_reach_the_other_replica_within_two_seconds(replicas, tls_files):
    (a_mysql, a_api), (b_mysql, b_api) = replicas[0]
    issuer: TokenIssuer = replicas[1]
    ca = ssl.create_default_context(cafile=str(tls_files.ca_cert))

    def api(user, groups=()):
        token = issuer.issue(user, groups, ttl=timedelta(hours=1))
        return httpx.Client(base_url=f"https://127.0.0.1:{a_api}", verify=ca,
                            headers={"Authorization": f"Bearer {token}"})

    session = pymysql.connect(host="127.0.0.1", port=b_mysql, user="rep",
                              password=issuer.issue("rep", ttl=timedelta(hours=1)),
                              ssl=client_ssl(tls_files), autocommit=True)
    cur = session.cursor()

    def allowed() -> bool:
        try:
            cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
            return True
        except pymysql.MySQLError as e:
            assert e.args[0] == 1142, e.args
            return False

    assert not allowed()
    with api("rep") as c:
        request = c.post("/v1/requests", json={"db": "hr_prod", "tables": ["salary"], "duration": "1h",
                                               "reason": "INC-77 replica test"}).json()
    with api("olga", ("project-owner",)) as c:
        approved = c.post(f"/v1/requests/{request['id']}/approve", json={}).json()
    assert approved["status"] == "approved"
    approval_delay = _wait_until(allowed)

    with api("dana", ("dba",)) as c:  # dba is an admin group (proxy_config)
        for grant_id in approved["grant_ids"]:
            assert c.delete(f"/v1/grants/{grant_id}").status_code == 200
    revocation_delay = _wait_until(lambda: not allowed())
    session.close()
    print(f"\nreplicas: approval seen on the other replica after {approval_delay * 1000:.0f} ms, "
          f"revocation after {revocation_delay * 1000:.0f} ms (store polled every 0.5 s)")
    assert approval_delay < BOUND_S and revocation_delay < BOUND_S
